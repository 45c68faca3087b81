-- A handler returned: the batch is delivered, its record goes.
-- KEYS: ready, running, dead, stats
-- ARGV: batch_id, batch_prefix
-- Returns the number of events delivered (0 if the record was already gone).
local key = ARGV[2] .. ARGV[1]
local r = redis.call('HMGET', key, 'member', 'n')
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if not r[1] then return 0 end
redis.call('DEL', key)
local binding = string.sub(r[1], 1, string.find(r[1], '|', 1, true) - 1)
redis.call('HINCRBY', KEYS[4], 'batches_delivered:' .. binding, 1)
redis.call('HINCRBY', KEYS[4], 'events_delivered:' .. binding, tonumber(r[2]))
return tonumber(r[2])
