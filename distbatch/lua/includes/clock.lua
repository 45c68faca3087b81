-- Server time in ms; windows use `window_now` (a ManualClock's value when one is passed).
local t = redis.call('TIME')
local real_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function window_clock(arg)
  if arg == nil or arg == '' then return real_now end
  return tonumber(arg)
end
