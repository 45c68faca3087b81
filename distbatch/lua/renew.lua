-- Extend a running batch's lease, only for the claim that holds it (fencing).
-- KEYS: running, batch
-- ARGV: batch_id, token, lease_ms
-- Returns 1 renewed, 0 the lease is lost (another claim, lease ran out, or batch gone).
-- @include clock
local k_running, key, id = KEYS[1], KEYS[2], ARGV[1]
-- @include owner
if check_owner(ARGV[2]) ~= 'ok' then return 0 end
redis.call('ZADD', k_running, real_now + tonumber(ARGV[3]), id)
return 1
