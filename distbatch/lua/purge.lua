-- Delete a dead batch for good; its events are counted (`events_purged:<binding>`), so events
-- in = delivered + discarded + overflowed + dropped + purged + still waiting keeps adding up.
-- KEYS: the 11 lifecycle keys, then this call's kept reply
-- ARGV: batch_id
-- Returns 1 if it was dead and is gone now, else 0; a resend of a call that did it, 1.
local B = 0
-- @include lifecycle
local k_full = k_stats
-- @include runs_when_full
-- @include binding_of
local k_kept = KEYS[12]
-- @include kept_reply
local kept = kept_reply()
if #kept > 0 then return 1 end
if not redis.call('ZSCORE', k_dead, ARGV[1]) then return 0 end
local info = record_info(ARGV[1])
if info and not info.garbled then  -- counted first: a write that fails leaves it dead, uncounted
  redis.call('HINCRBY', k_stats, 'events_purged:' .. binding_of(info.member), info.n)
end
redis.call('ZREM', k_dead, ARGV[1])
delete_record(ARGV[1])
keep_reply({1})
return 1
