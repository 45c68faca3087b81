-- A lease ran out (its worker was killed, paused or cut off): take the batch back from that
-- claim — ready again at the front, or dead when its binding's attempts are used up.
-- KEYS: bindings, dropped, ready, running, dead, stats, batch
-- ARGV: batch_id
-- Returns 'retry', 'dead', or 'live' (lease renewed meanwhile: nothing changed), 'gone'.
-- @include clock
-- @include binding_of
local k_bindings, k_dropped, k_ready, k_running, k_dead, k_stats, key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id = ARGV[1]
local lease = redis.call('ZSCORE', k_running, id)
if not lease then return 'gone' end
if tonumber(lease) >= real_now then return 'live' end
redis.call('ZREM', k_running, id)
local r = redis.call('HMGET', key, 'member', 'attempt')
if not r[1] then return 'gone' end
local binding = binding_of(r[1])
local def = redis.call('HGET', k_bindings, binding) or redis.call('HGET', k_dropped, binding)
local attempts = def and cjson.decode(def)['retry']['attempts'] or 1
redis.call('HDEL', key, 'owner')
redis.call('HSET', key, 'error', 'lease expired: the worker running it stopped renewing ' ..
           '(killed, paused or cut off from Redis)', 'failed_ms', real_now)
redis.call('HINCRBY', k_stats, 'leases_expired', 1)
if tonumber(r[2]) >= attempts then
  redis.call('ZADD', k_dead, real_now, id)
  redis.call('HINCRBY', k_stats, 'batches_dead', 1)
  return 'dead'
end
redis.call('ZADD', k_ready, tonumber(id), id)
return 'retry'
