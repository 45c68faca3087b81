-- Store a binding unless one with the same key and a different definition exists, registered or
-- dropped: a dropped binding's definition still governs the batches it cut (workers read it from
-- `dropped`), so the same id@version never stands for two behaviours (SPEC §4). Registering a
-- dropped binding again with the definition it had takes it back.
-- KEYS: bindings, regver, dropped
-- ARGV: binding, definition (canonical JSON), new registry epoch (random), optionally '1': a
--       restore (an instance storing again what Redis lost): a binding dropped is left dropped
-- Returns 1 if stored, 0 if the identical definition was there, 2 if a restore found it dropped,
-- else {existing definition, 'registered' or 'dropped'}.
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing == ARGV[2] then return 0 end
if existing then return {existing, 'registered'} end
local dropped = redis.call('HGET', KEYS[3], ARGV[1])
if dropped and ARGV[4] == '1' then return 2 end
if dropped and dropped ~= ARGV[2] then return {dropped, 'dropped'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[1])
-- An epoch, not a counter: a counter repeats after Redis loses its data, and emitters holding
-- routes from before would be accepted.
redis.call('SET', KEYS[2], ARGV[3])
return 1
