-- Delete a dead batch for good.
-- KEYS: the 11 lifecycle keys, then this call's kept reply
-- ARGV: batch_id
-- Returns 1 if it was dead and is gone now, else 0; a resend of a call that did it, 1.
local B = 0
-- @include lifecycle
local k_kept = KEYS[12]
-- @include kept_reply
local kept = kept_reply()
if #kept > 0 then return 1 end
if redis.call('ZREM', k_dead, ARGV[1]) == 0 then return 0 end
delete_record(ARGV[1])
keep_reply({1})
return 1
