-- Bring a dead batch back: fresh attempts, ready now.
-- KEYS: the 11 lifecycle keys, then this call's kept reply, the bell
-- ARGV: batch_id
-- Returns 1 if it was dead and is ready again, else 0; a resend of a call that did it, 1.
local B = 0
-- @include lifecycle
local k_full = k_stats
-- @include runs_when_full
local k_kept = KEYS[12]
-- @include bell
-- @include kept_reply
local kept = kept_reply()
if #kept > 0 then return 1 end
local id = ARGV[1]
if not redis.call('ZSCORE', k_dead, id) then return 0 end
if redis.call('HEXISTS', k_info, id) == 0 then
  redis.call('ZREM', k_dead, id)
  return 0
end
redis.call('HSET', k_attempt, id, 0)
redis.call('ZADD', k_ready, seq_of(id), id)
redis.call('ZREM', k_dead, id)  -- last: a failed write leaves it dead, not in no set
ring(KEYS[13], 1)
keep_reply({1})
return 1
