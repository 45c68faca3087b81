-- A try failed: retry after a delay, give the batch back uncounted, or keep it dead — only for
-- the claim that holds it (fencing). Idempotent per token: a retried call returns the same.
-- KEYS: the 11 lifecycle keys, the bell
-- ARGV: batch_id, token, error, delay_ms (-1 = dead, no tries left), refund ('1': the try did
--       not count, e.g. this worker cannot run the handler)
-- Returns 'retry', 'dead', 'stale' (nothing changed) or 'gone'. A refunded try (given back
-- unstarted, or a handler this worker cannot run) counts in `batches_given_back`, not in
-- `batch_retries`: no handler failed.
local B = 0
-- @include clock
-- @include lifecycle
local k_full = k_stats
-- @include runs_when_full
-- @include bell
local k_bell = KEYS[12]
local id, token = ARGV[1], ARGV[2]
local state = check_owner(id, token)
if state == 'gone' then return 'gone' end
if state == 'stale' then
  local last = redis.call('HGET', k_error, id)
  local by, outcome = string.match(last or '', '^.-\n(.-)\n(.-)\n')
  if by == token then return outcome end
  return 'stale'
end
local delay = tonumber(ARGV[4])
local counted = ARGV[5] == '1' and 'batches_given_back' or 'batch_retries'
local outcome = delay < 0 and 'dead' or 'retry'
-- where it goes first, out of `running` last: a write a hostile writer's value fails leaves the
-- batch running, where its lease runs out and a sweeper takes it back
set_error(id, token, outcome, ARGV[3])
if ARGV[5] == '1' and attempt_of(id) then redis.call('HINCRBY', k_attempt, id, -1) end
if delay < 0 then
  redis.call('ZADD', k_dead, real_now, id)
  redis.call('HINCRBY', k_stats, 'batches_dead', 1)
elseif delay == 0 then
  redis.call('ZADD', k_ready, seq_of(id), id)
  redis.call('HINCRBY', k_stats, counted, 1)
else
  redis.call('ZADD', k_delayed, real_now + delay, id)
  redis.call('HINCRBY', k_stats, counted, 1)
end
redis.call('ZREM', k_running, id)
disown(id)
if delay == 0 then ring(k_bell, 1) end
return outcome
