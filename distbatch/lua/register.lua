-- Store a binding unless one with the same key and a different definition exists.
-- KEYS: bindings, regver, dropped
-- ARGV: binding, definition (canonical JSON), new registry epoch (random)
-- Returns 1 if stored, 0 if the identical definition was there, else the existing definition.
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing == ARGV[2] then return 0 end
if existing then return existing end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[1])
-- An epoch, not a counter: a counter repeats after Redis loses its data, and emitters holding
-- routes from before would be accepted.
redis.call('SET', KEYS[2], ARGV[3])
return 1
