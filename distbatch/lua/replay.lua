-- Bring a dead batch back: fresh attempts, ready now.
-- KEYS: ready, dead, batch
-- ARGV: batch_id
-- Returns 1 if it was dead and is ready again, else 0.
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('HSET', KEYS[3], 'attempt', 0)
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), ARGV[1])
return 1
