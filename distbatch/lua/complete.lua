-- A handler returned: the batch is delivered and its record goes, if this claim still holds it.
-- KEYS: running, stats, batch
-- ARGV: batch_id, token
-- Returns events delivered (> 0), 0 if the record is gone (delivered already: a retried call),
--         -1 if this claim lost the batch (stale token or lease ran out): nothing changed.
-- @include clock
local k_running, k_stats, key, id = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
-- @include owner
-- @include binding_of
local state = check_owner(ARGV[2])
if state == 'gone' then return 0 end
if state == 'stale' then return -1 end
local r = redis.call('HMGET', key, 'member', 'n')
redis.call('ZREM', k_running, id)
redis.call('DEL', key)
local binding = binding_of(r[1])
redis.call('HINCRBY', k_stats, 'batches_delivered:' .. binding, 1)
redis.call('HINCRBY', k_stats, 'events_delivered:' .. binding, tonumber(r[2]))
return math.max(1, tonumber(r[2]))
