-- Make one shard's copy of the registry equal to the first shard's (a register or drop that
-- reached the first shard but not this one, cut off part-way), unless this copy changed since
-- the caller saw it out of step: a register or drop under way reaches this shard after the first
-- one, and a snapshot of the first read before it must not put back what it has just changed (a
-- dropped binding taking events again, a new one losing them). A binding the copy loses moves to
-- `dropped`, as `unbind` moves it: workers find it there for the batches it cut, and a drop that
-- reaches this shard later finds it dropped before. One the copy gains leaves `dropped`, as
-- `register` takes it out.
-- KEYS: bindings, regver, dropped
-- ARGV: the epoch the caller saw on this shard ('' for none), the first shard's epoch, then
--       pairs: binding, definition
-- Returns 1 when synced, 0 when this copy had changed meanwhile (nothing written).
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
local keep = {}
for i = 3, #ARGV, 2 do keep[ARGV[i]] = true end
local current = redis.call('HGETALL', KEYS[1])
for i = 1, #current, 2 do
  if not keep[current[i]] then redis.call('HSET', KEYS[3], current[i], current[i + 1]) end
end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HDEL', KEYS[3], ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
