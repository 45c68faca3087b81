-- Delete a dead batch for good.
-- KEYS: the 11 lifecycle keys
-- ARGV: batch_id
-- Returns 1 if it was dead and is gone now, else 0.
local B = 0
-- @include lifecycle
if redis.call('ZREM', k_dead, ARGV[1]) == 0 then return 0 end
delete_record(ARGV[1])
return 1
