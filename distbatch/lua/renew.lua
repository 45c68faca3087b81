-- Extend a running batch's lease, only for the claim that holds it (fencing).
-- KEYS: the 11 lifecycle keys
-- ARGV: batch_id, token, lease_ms
-- Returns 1 renewed, 0 the lease is lost (another claim, lease ran out, or batch gone).
local B = 0
-- @include clock
-- @include lifecycle
local k_full = k_stats
-- @include runs_when_full
if check_owner(ARGV[1], ARGV[2]) ~= 'ok' then return 0 end
redis.call('ZADD', k_running, real_now + tonumber(ARGV[3]), ARGV[1])
return 1
