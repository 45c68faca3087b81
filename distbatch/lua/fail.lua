-- A try failed (handler raised, or its worker's lease ran out): retry later or keep it dead.
-- KEYS: ready, running, dead, stats
-- ARGV: batch_id, batch_prefix, error, retry_delay_ms (-1 = no tries left), only_if_expired
-- Returns 0 if nothing changed (gone, or lease still live), 1 retry scheduled, 2 dead.
-- @include clock
local k_ready, k_running, k_dead, k_stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, key = ARGV[1], ARGV[2] .. ARGV[1]
if ARGV[5] == '1' then
  local lease = redis.call('ZSCORE', k_running, id)
  if not lease or tonumber(lease) > real_now then return 0 end
end
if redis.call('EXISTS', key) == 0 then
  redis.call('ZREM', k_running, id)
  return 0
end
redis.call('ZREM', k_running, id)
redis.call('HSET', key, 'error', ARGV[3], 'failed_ms', real_now)
local delay = tonumber(ARGV[4])
if delay < 0 then
  redis.call('ZREM', k_ready, id)
  redis.call('ZADD', k_dead, real_now, id)
  redis.call('HINCRBY', k_stats, 'batches_dead', 1)
  return 2
end
redis.call('ZADD', k_ready, real_now + delay, id)
redis.call('HINCRBY', k_stats, 'batch_retries', 1)
return 1
