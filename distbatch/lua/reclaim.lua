-- A lease ran out (its worker was killed, paused or cut off): take the batch back from that
-- claim — ready again at the front, or dead when its binding's attempts are used up.
-- A batch its claim took with others (token `<token>.<i>`: `claim.lua`) was in its worker's hand
-- with them: the worker ran them in turn and completes them together, so when it died Redis
-- cannot tell which batch was running, which had returned and which had not started. Its try is
-- given back and it is marked SUSPECT: the next claim takes it alone, and a death then is counted
-- against it. Counting the first of the claim instead (as before) sent innocent batches to the
-- dead when a later one killed its worker, while that one ran again uncounted, killing a worker
-- each time, until it came first.
-- KEYS: the 11 lifecycle keys, bindings, dropped, the bell
-- ARGV: batch_id, the id prefix of the shard whose running set holds it (as claim.lua)
-- Returns 'retry', 'dead', 'live' (lease renewed meanwhile: nothing changed) or 'gone'.
local B = 0
-- @include clock
-- @include lifecycle
local k_full = k_stats
-- @include runs_when_full
-- @include binding_of
-- @include bell
local k_bindings, k_dropped = KEYS[12], KEYS[13]
local id = ARGV[1]
local lease = redis.call('ZSCORE', k_running, id)
if not lease then return 'gone' end
if tonumber(lease) >= real_now then return 'live' end
local info = record_info(id, ARGV[2])
if not info then
  redis.call('ZREM', k_running, id)
  return 'gone'
end
local attempt = attempt_of(id)
if info.garbled or not attempt then
  bury(id)
  redis.call('ZREM', k_running, id)
  return 'dead'
end
local owner = redis.call('HGET', k_owner, id) or ''
local behind = string.find(owner, '.', 1, true) ~= nil and attempt > 0
if behind then
  attempt = attempt - 1
  redis.call('HSET', k_attempt, id, attempt)
end
local binding = binding_of(info.member)
local def = redis.call('HGET', k_bindings, binding) or redis.call('HGET', k_dropped, binding)
-- a definition that does not decode (a hostile writer's) allows one try, as a missing one does
local ok, parsed = pcall(cjson.decode, def or '')
local attempts = ok and type(parsed) == 'table' and type(parsed['retry']) == 'table' and
  tonumber(parsed['retry']['attempts']) or 1
local outcome = attempt >= attempts and 'dead' or 'retry'
-- where it goes first, out of `running` last (as fail.lua)
set_error(id, '', outcome, 'lease expired: the worker ' .. (behind and 'holding' or 'running') ..
          ' it stopped renewing (killed, paused or cut off from Redis)' ..
          (behind and '; it was claimed with other batches and which one stopped the worker is not known: ' ..
           'its try is not counted, and it runs alone next' or ''))
redis.call('HINCRBY', k_stats, 'leases_expired', 1)
if outcome == 'dead' then
  redis.call('ZADD', k_dead, real_now, id)
  redis.call('HINCRBY', k_stats, 'batches_dead', 1)
else
  redis.call('ZADD', k_ready, seq_of(id), id)
end
redis.call('ZREM', k_running, id)
disown(id)
if behind and outcome == 'retry' then redis.call('HSET', k_owner, id, SUSPECT) end
if outcome == 'retry' then ring(KEYS[14], 1) end
return outcome
