-- Remove a binding and every buffer it has open; return the events that were pending.
-- Batches it already cut stay and are delivered: its definition moves to `dropped`, where
-- workers still find the handler and retry policy.
-- KEYS: bindings, regver, deadlines, stats, dropped
-- ARGV: binding, buf_prefix, open_prefix, new registry epoch (random)
-- Returns {existed 0/1, then per buffer: member, events}.
local k_bindings, k_regver, k_deadlines, k_stats, k_dropped = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local binding, bufp, openp = ARGV[1], ARGV[2], ARGV[3]
local def = redis.call('HGET', k_bindings, binding)
if def then redis.call('HSET', k_dropped, binding, def) end
local existed = redis.call('HDEL', k_bindings, binding)
local out = {existed}
local dropped = 0
for _, member in ipairs(redis.call('SMEMBERS', openp .. binding)) do
  local key = bufp .. member
  local events = redis.call('LRANGE', key, 0, -1)
  redis.call('DEL', key)
  redis.call('ZREM', k_deadlines, member)
  dropped = dropped + #events
  out[#out + 1] = member
  out[#out + 1] = table.concat(events)
end
redis.call('DEL', openp .. binding)
if dropped > 0 then redis.call('HINCRBY', k_stats, 'events_dropped:' .. binding, dropped) end
redis.call('SET', k_regver, ARGV[4])
return out
