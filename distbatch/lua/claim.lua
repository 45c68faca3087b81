-- Take a batch for running: count the attempt and hold a lease, unless someone holds one.
-- KEYS: ready, running, dead
-- ARGV: batch_id, batch_prefix, lease_ms
-- Returns {0} gone (already delivered), {1, lease} busy, {2} dead, or
--         {3, member, reason, cut_ms, attempt, events}.
-- @include clock
local k_ready, k_running, k_dead = KEYS[1], KEYS[2], KEYS[3]
local id, key = ARGV[1], ARGV[2] .. ARGV[1]
if redis.call('EXISTS', key) == 0 then
  redis.call('ZREM', k_ready, id)
  return {0}
end
local lease = redis.call('ZSCORE', k_running, id)
if lease and tonumber(lease) > real_now then return {1, lease} end
if redis.call('ZSCORE', k_dead, id) then return {2} end
local attempt = redis.call('HINCRBY', key, 'attempt', 1)
redis.call('ZREM', k_ready, id)
redis.call('ZADD', k_running, real_now + tonumber(ARGV[3]), id)
local r = redis.call('HMGET', key, 'member', 'reason', 'cut_ms', 'events')
return {3, r[1], r[2], r[3], attempt, r[4]}
