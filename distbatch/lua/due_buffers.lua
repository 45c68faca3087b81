-- Which buffers' windows have run out (read-only): the first step of a flush, so the flush
-- script can be given every buffer key it touches. O(log N + due).
-- KEYS: deadlines
-- ARGV: window_now ('' = server TIME), limit
-- Returns {server time (ms), earliest deadline or -1, due members...}.
-- @include clock
local now = real_now
if (ARGV[1] or '') ~= '' then now = tonumber(ARGV[1]) end
local out = {real_now, -1}
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then out[2] = tonumber(first[2]) end
if first[2] and tonumber(first[2]) <= now then
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
    out[#out + 1] = m
  end
end
return out
