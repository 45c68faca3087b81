-- Make one shard's copy of the registry equal to the given one (a register or drop that reached
-- the first shard but not this one, cut off part-way).
-- KEYS: bindings, regver
-- ARGV: epoch, then pairs: binding, definition
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[2], ARGV[1])
return 1
