-- Second step of `drop`: remove the dropped binding's buffers and return their events.
-- KEYS: deadlines, stats, open-set key of the binding, this call's kept reply, bindings, then the
--       buffer keys
-- ARGV: binding, buffer key prefix
-- Returns {members still open (not passed: call again), then per buffer: member, how many
-- events (a string, as a kept reply's every element is), events}; a
-- resend of the call returns the same (the buffers are gone by then). {-1} when the binding was
-- registered again since the first step (nothing drained): its buffers hold events acknowledged
-- to it since, no longer the drop's.
local k_deadlines, k_stats, open_key, k_kept = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local F = 6  -- the first buffer key
local k_full = k_stats
-- @include runs_when_full
-- @include kept_reply
local kept = kept_reply()
if #kept > 0 then
  kept[1] = tonumber(kept[1])
  return kept
end
if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return {-1} end
local out = {0}
local dropped = 0
-- Every buffer read and the count written before any is deleted: a key a hostile writer gave
-- another type fails the call with every buffer still there, none lost unreturned.
for i = F, #KEYS do
  local events = redis.call('LRANGE', KEYS[i], 0, -1)
  dropped = dropped + #events
  out[#out + 1] = string.sub(KEYS[i], #ARGV[2] + 1)
  out[#out + 1] = tostring(#events)
  out[#out + 1] = table.concat(events)
end
if dropped > 0 then redis.call('HINCRBY', k_stats, 'events_dropped:' .. ARGV[1], dropped) end
for i = F, #KEYS do
  local member = out[3 * (i - F) + 2]
  redis.call('DEL', KEYS[i])
  redis.call('ZREM', k_deadlines, member)
  redis.call('SREM', open_key, member)
end
out[1] = redis.call('SCARD', open_key)
if #out > 1 then keep_reply(out) end
return out
