-- Sweepers share a namespace's shards with short leases: take or keep one, let it go, or take it
-- from a holder that is no live sweeper (a hostile writer's value, a key set with no TTL: it
-- held the shard for good, and no sweeper promoted its retries or reclaimed its leases).
-- KEYS: the shard's lease key
-- ARGV: sweeper id, lease_ms, 'hold', 'release' or 'take', and for 'take' the holder seen and
--       the longest lease a sweeper sets (ms): a holder whose key lives no longer than that may
--       be a live sweeper's with a longer lease than the caller's (whose heartbeats the caller
--       pruned as old), and is left alone; with no TTL, or a longer one, it is no sweeper's
-- Returns 1 if the caller holds the shard now, 0 if not.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if ARGV[3] == 'take' then
  if holder ~= ARGV[4] then return 0 end  -- it changed since: a sweeper's own now, or gone
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl >= 0 and ttl <= tonumber(ARGV[5]) then return 0 end
  redis.call('DEL', KEYS[1])  -- first, a write Redis never refuses for memory (`runs_when_full`)
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('DEL', KEYS[1])  -- as above: a sweeper takes its lease at maxmemory too
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
