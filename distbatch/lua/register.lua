-- Store a binding unless one with the same key and a different definition exists.
-- KEYS: bindings, regver
-- ARGV: binding, definition (canonical JSON)
-- Returns 1 if stored, 0 if the identical definition was there, else the existing definition.
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing == ARGV[2] then return 0 end
if existing then return existing end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
