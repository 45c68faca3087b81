-- Append events to their buffers; open windows; enforce the cap; cut batches at `count`.
-- KEYS: regver, call (this emitter's last call id), deadlines, wake (pub/sub channel), batchseq,
--       ready, stats
-- ARGV: expected_regver, call_id, window_now ('' = server TIME), cap, buf_prefix, open_prefix,
--       batch_prefix, then per item: member, count, window_ms, event_bytes
-- Returns {-1, current_regver} when the caller's bindings are stale (nothing written),
--         {-2} when this call id already ran (a retry after a lost reply; nothing written again),
--         else {real_now, then per item: overflowed, batch_id or '', batch events or ''}.
local k_regver, k_call, k_deadlines, k_wake, k_seq, k_ready, k_stats =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
-- The call id first: a retry of a call that ran must not be re-run after a reload either.
if redis.call('GET', k_call) == ARGV[2] then return {-2} end
local current = redis.call('GET', k_regver) or ''
if current ~= ARGV[1] then return {-1, current} end
redis.call('SET', k_call, ARGV[2], 'PX', 600000)
local cap = tonumber(ARGV[4])
local bufp, openp, batchp = ARGV[5], ARGV[6], ARGV[7]
-- @include clock
-- @include buffers
local now = window_clock(ARGV[3])

local out = {real_now}
local accepted = {}
-- Earliest open deadline, read only when this call opens a window (most appends open none):
-- false = not read yet, nil = no open window.
local earliest = false
local woke = false

for i = 8, #ARGV, 4 do
  local member, count = ARGV[i], tonumber(ARGV[i + 1])
  local binding = binding_of(member)
  local key = bufp .. member
  local n = redis.call('RPUSH', key, ARGV[i + 3])
  accepted[binding] = (accepted[binding] or 0) + 1
  if n == 1 then
    if earliest == false then
      local first = redis.call('ZRANGE', k_deadlines, 0, 0, 'WITHSCORES')
      earliest = first[2] and tonumber(first[2])
    end
    local deadline = now + tonumber(ARGV[i + 2])
    redis.call('ZADD', k_deadlines, deadline, member)
    redis.call('SADD', openp .. binding, member)
    if earliest == nil or deadline < earliest then
      earliest = deadline
      woke = true
    end
  end
  local overflowed = 0
  if n > cap then
    redis.call('LPOP', key)
    overflowed = 1
    n = cap
    redis.call('HINCRBY', k_stats, 'events_overflowed:' .. binding, 1)
  end
  if n >= count then
    local events = redis.call('LRANGE', key, 0, -1)
    close_buffer(member, binding)
    local id = cut_batch(member, binding, events, 'count')
    out[#out + 1] = overflowed
    out[#out + 1] = id
    out[#out + 1] = table.concat(events)
  else
    out[#out + 1] = overflowed
    out[#out + 1] = ''
    out[#out + 1] = ''
  end
end
for binding, n in pairs(accepted) do
  redis.call('HINCRBY', k_stats, 'events_in:' .. binding, n)
end
if woke then
  redis.call('PUBLISH', k_wake, earliest)
end
return out
