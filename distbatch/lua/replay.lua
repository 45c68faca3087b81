-- Bring a dead batch back: fresh attempts, ready now.
-- KEYS: the 11 lifecycle keys
-- ARGV: batch_id
-- Returns 1 if it was dead and is ready again, else 0.
local B = 0
-- @include lifecycle
local id = ARGV[1]
if redis.call('ZREM', k_dead, id) == 0 then return 0 end
if redis.call('HEXISTS', k_info, id) == 0 then return 0 end
redis.call('HSET', k_attempt, id, 0)
redis.call('ZADD', k_ready, seq_of(id), id)
return 1
