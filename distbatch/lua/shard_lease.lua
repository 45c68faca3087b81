-- Sweepers share a namespace's shards with short leases: take or keep one, let it go, or take it
-- from a holder that is no live sweeper (a hostile writer's value, a key set with no TTL: it
-- held the shard for good, and no sweeper promoted its retries or reclaimed its leases).
-- KEYS: the shard's lease key
-- ARGV: sweeper id, lease_ms, 'hold', 'release' or 'take', and for 'take' the holder seen
-- Returns 1 if the caller holds the shard now, 0 if not.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if ARGV[3] == 'take' then
  if holder ~= ARGV[4] then return 0 end  -- it changed since: a sweeper's own now, or gone
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
