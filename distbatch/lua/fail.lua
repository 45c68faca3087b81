-- A try failed: retry after a delay, give the batch back uncounted, or keep it dead — only for
-- the claim that holds it (fencing). Idempotent per token: a retried call returns the same.
-- KEYS: ready, running, delayed, dead, stats, batch
-- ARGV: batch_id, token, error, delay_ms (-1 = dead, no tries left), refund ('1': the try did
--       not count, e.g. this worker cannot run the handler)
-- Returns 'retry', 'dead', 'stale' (nothing changed) or 'gone'.
-- @include clock
local k_ready, k_running, k_delayed, k_dead, k_stats, key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, token = ARGV[1], ARGV[2]
-- @include owner
local state = check_owner(token)
if state == 'gone' then return 'gone' end
if state == 'stale' then
  local last = redis.call('HMGET', key, 'failed_by', 'outcome')
  if last[1] == token then return last[2] end
  return 'stale'
end
local delay = tonumber(ARGV[4])
local outcome = delay < 0 and 'dead' or 'retry'
redis.call('ZREM', k_running, id)
redis.call('HDEL', key, 'owner')
redis.call('HSET', key, 'error', ARGV[3], 'failed_ms', real_now, 'failed_by', token,
           'outcome', outcome)
if ARGV[5] == '1' then redis.call('HINCRBY', key, 'attempt', -1) end
if delay < 0 then
  redis.call('ZADD', k_dead, real_now, id)
  redis.call('HINCRBY', k_stats, 'batches_dead', 1)
elseif delay == 0 then
  redis.call('ZADD', k_ready, tonumber(id), id)
  redis.call('HINCRBY', k_stats, 'batch_retries', 1)
else
  redis.call('ZADD', k_delayed, real_now + delay, id)
  redis.call('HINCRBY', k_stats, 'batch_retries', 1)
end
return outcome
