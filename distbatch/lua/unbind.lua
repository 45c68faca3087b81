-- First step of `drop`: the binding stops taking events on this shard (its definition moves to
-- `dropped`, where workers still find it for the batches it cut, and the epoch changes, so
-- emitters holding it reload). Returns the members of its open buffers, for `drain_buffers`.
-- KEYS: bindings, regver, dropped, open-set key of the binding
-- ARGV: binding, new registry epoch (random)
-- Returns {registered 0/1, dropped before 0/1, members...}. A binding neither registered nor
-- dropped before (a typo) changes nothing: the epoch stays, so no emitter reloads for it.
local k_full = KEYS[1]
-- @include runs_when_full
local def = redis.call('HGET', KEYS[1], ARGV[1])
local dropped_before = redis.call('HEXISTS', KEYS[3], ARGV[1])
if def then
  redis.call('HSET', KEYS[3], ARGV[1], def)
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
end
local out = {def and 1 or 0, dropped_before}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[4])) do out[#out + 1] = member end
return out
