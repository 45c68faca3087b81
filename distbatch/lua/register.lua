-- Store a binding unless one with the same key and a different definition exists, registered or
-- dropped: a dropped binding's definition still governs the batches it cut (workers read it from
-- `dropped`), so the same id@version never stands for two behaviours (SPEC §4). Registering a
-- dropped binding again with the definition it had takes it back.
-- KEYS: bindings, regver, dropped
-- ARGV: binding, definition (canonical JSON), new registry epoch (random)
-- Returns 1 if stored, 0 if the identical definition was there, else {existing definition,
-- 'registered' or 'dropped'}.
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing == ARGV[2] then return 0 end
if existing then return {existing, 'registered'} end
local dropped = redis.call('HGET', KEYS[3], ARGV[1])
if dropped and dropped ~= ARGV[2] then return {dropped, 'dropped'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[1])
-- An epoch, not a counter: a counter repeats after Redis loses its data, and emitters holding
-- routes from before would be accepted.
redis.call('SET', KEYS[2], ARGV[3])
return 1
