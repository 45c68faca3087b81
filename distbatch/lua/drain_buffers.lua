-- Second step of `drop`: remove the dropped binding's buffers and return their events.
-- KEYS: deadlines, stats, open-set key of the binding, then the buffer keys
-- ARGV: binding, buffer key prefix
-- Returns {members still open (not passed: call again), then per buffer: member, events}.
local k_deadlines, k_stats, open_key = KEYS[1], KEYS[2], KEYS[3]
local out = {0}
local dropped = 0
for i = 4, #KEYS do
  local member = string.sub(KEYS[i], #ARGV[2] + 1)
  local events = redis.call('LRANGE', KEYS[i], 0, -1)
  redis.call('DEL', KEYS[i])
  redis.call('ZREM', k_deadlines, member)
  redis.call('SREM', open_key, member)
  dropped = dropped + #events
  out[#out + 1] = member
  out[#out + 1] = table.concat(events)
end
out[1] = redis.call('SCARD', open_key)
if dropped > 0 then redis.call('HINCRBY', k_stats, 'events_dropped:' .. ARGV[1], dropped) end
return out
