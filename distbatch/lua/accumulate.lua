-- Append events to their buffers; open windows; enforce the cap; cut batches at `count`.
-- An event whose buffer's window already ran out (no sweeper got to it yet) never joins it: the
-- expired buffer is flushed first (cut as 'expired', or discarded), and the event opens a fresh
-- buffer and window, as if a sweeper had run just before.
-- KEYS: regver, call (this emitter's last call id), deadlines, wake (pub/sub channel), batchseq,
--       ready, stats, bindings
-- ARGV: expected_regver, call_id, window_now ('' = server TIME), cap, buf_prefix, open_prefix,
--       batch_prefix, then per item: member, count, window_ms, event_bytes
-- Returns {-1, current_regver} when the caller's bindings are stale (nothing written),
--         {-2} when this call id already ran (a retry after a lost reply; nothing written again),
--         else {real_now, then per notable item: item number (1-based), kind, batch_id, events}
--         with kind 'count' (cut at count), 'expired' (the expired buffer it closed, cut),
--         'discard' (the expired buffer it closed, discarded) or 'overflow' (cap: oldest
--         dropped; id and events ''). Items with nothing to report are left out.
local k_regver, k_call, k_deadlines, k_wake, k_seq, k_ready, k_stats, k_bindings =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
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

local actions = {}
local function expire_action(binding)
  local action = actions[binding]
  if action == nil then
    local def = redis.call('HGET', k_bindings, binding)
    action = def and cjson.decode(def)['batch']['expire_action'] or 'fire_partial'
    actions[binding] = action
  end
  return action
end

local function report(item, kind, id, blob)
  out[#out + 1] = item
  out[#out + 1] = kind
  out[#out + 1] = id
  out[#out + 1] = blob
end

for i = 8, #ARGV, 4 do
  local item = (i - 4) / 4
  local member, count = ARGV[i], tonumber(ARGV[i + 1])
  local binding = binding_of(member)
  local key = bufp .. member
  local deadline = redis.call('ZSCORE', k_deadlines, member)
  if deadline and tonumber(deadline) <= now then
    local events = redis.call('LRANGE', key, 0, -1)
    close_buffer(member, binding)
    if #events > 0 then
      if expire_action(binding) == 'discard' then
        local id = tostring(redis.call('INCR', k_seq))
        redis.call('HINCRBY', k_stats, 'batches_discarded:' .. binding, 1)
        redis.call('HINCRBY', k_stats, 'events_discarded:' .. binding, #events)
        report(item, 'discard', id, table.concat(events))
      else
        report(item, 'expired', cut_batch(member, binding, events, 'expired'), table.concat(events))
      end
    end
  end
  local n = redis.call('RPUSH', key, ARGV[i + 3])
  accepted[binding] = (accepted[binding] or 0) + 1
  if n == 1 then
    if earliest == false then
      local first = redis.call('ZRANGE', k_deadlines, 0, 0, 'WITHSCORES')
      earliest = first[2] and tonumber(first[2])
    end
    local closes = now + tonumber(ARGV[i + 2])
    redis.call('ZADD', k_deadlines, closes, member)
    redis.call('SADD', openp .. binding, member)
    if earliest == nil or closes < earliest then
      earliest = closes
      woke = true
    end
  end
  if n > cap then
    redis.call('LPOP', key)
    n = cap
    redis.call('HINCRBY', k_stats, 'events_overflowed:' .. binding, 1)
    report(item, 'overflow', '', '')
  end
  if n >= count then
    local events = redis.call('LRANGE', key, 0, -1)
    close_buffer(member, binding)
    report(item, 'count', cut_batch(member, binding, events, 'count'), table.concat(events))
  end
end
for binding, n in pairs(accepted) do
  redis.call('HINCRBY', k_stats, 'events_in:' .. binding, n)
end
if woke then
  redis.call('PUBLISH', k_wake, earliest)
end
return out
