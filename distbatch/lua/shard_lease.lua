-- Sweepers share a namespace's shards with short leases: take or keep one, or let it go.
-- KEYS: the shard's lease key
-- ARGV: sweeper id, lease_ms, 'hold' or 'release'
-- Returns 1 if the caller holds the shard now, 0 if not.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
