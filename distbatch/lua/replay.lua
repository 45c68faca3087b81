-- Bring a dead batch back: fresh attempts, due for hand-off now.
-- KEYS: ready, dead
-- ARGV: batch_id, batch_prefix
-- Returns 1 if it was dead and is ready again, else 0.
-- @include clock
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
if redis.call('EXISTS', ARGV[2] .. ARGV[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', ARGV[2] .. ARGV[1], 'attempt', 0)
redis.call('ZADD', KEYS[1], real_now, ARGV[1])
return 1
