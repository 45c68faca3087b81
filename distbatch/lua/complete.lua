-- A handler returned: the batch is delivered and its record goes, if this claim still holds it.
-- KEYS: the 11 lifecycle keys, then this claim's done marker (`T:done:<token>`)
-- ARGV: batch_id, token, how long the done marker is kept (ms: `records.DONE_KEPT_MS`)
-- Returns events delivered (> 0), 0 if this claim delivered it already (a retried call),
--         -1 if this claim lost the batch (stale token, lease ran out, or another claim
--         delivered it meanwhile): nothing changed.
local B = 0
-- @include clock
-- @include lifecycle
local k_full = k_stats
-- @include runs_when_full
-- @include binding_of
local id = ARGV[1]
local state = check_owner(id, ARGV[2])
if state == 'gone' then
  return redis.call('EXISTS', KEYS[12]) == 1 and 0 or -1
end
if state == 'stale' then return -1 end
redis.call('SET', KEYS[12], 1, 'PX', ARGV[3])  -- a resend comes within it; one per batch adds up
local info = record_info(id)
redis.call('ZREM', k_running, id)
delete_record(id)
if info.garbled then return 1 end  -- garbled while it ran (a hostile writer): delivered, uncounted
local binding = binding_of(info.member)
redis.call('HINCRBY', k_stats, 'batches_delivered:' .. binding, 1)
redis.call('HINCRBY', k_stats, 'events_delivered:' .. binding, info.n)
return math.max(1, info.n)
