-- A handler returned: the batch is delivered and its record goes, if this claim still holds it.
-- KEYS: the 11 lifecycle keys
-- ARGV: batch_id, token
-- Returns events delivered (> 0), 0 if the record is gone (delivered already: a retried call),
--         -1 if this claim lost the batch (stale token or lease ran out): nothing changed.
local B = 0
-- @include clock
-- @include lifecycle
-- @include binding_of
local id = ARGV[1]
local state = check_owner(id, ARGV[2])
if state == 'gone' then return 0 end
if state == 'stale' then return -1 end
local info = record_info(id)
redis.call('ZREM', k_running, id)
delete_record(id)
local binding = binding_of(info.member)
redis.call('HINCRBY', k_stats, 'batches_delivered:' .. binding, 1)
redis.call('HINCRBY', k_stats, 'events_delivered:' .. binding, info.n)
return math.max(1, info.n)
