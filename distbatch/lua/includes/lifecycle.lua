-- The batch-lifecycle keys of one shard, taken from KEYS at offset B (set before the include):
-- ready, running, delayed, dead, stats, then the rec:* hashes in which a batch record is one
-- field (the batch id) each: events, info, attempt, owner, tokens, error.
local k_ready, k_running, k_delayed, k_dead, k_stats =
  KEYS[B + 1], KEYS[B + 2], KEYS[B + 3], KEYS[B + 4], KEYS[B + 5]
local k_events, k_info, k_attempt, k_owner, k_tokens, k_error =
  KEYS[B + 6], KEYS[B + 7], KEYS[B + 8], KEYS[B + 9], KEYS[B + 10], KEYS[B + 11]

-- A batch id is `<prefix><seq>`; its sequence number orders `ready` (oldest first). An id that
-- has none (made up by a hostile writer) sorts first, where a claim finds it has no record.
local function seq_of(id)
  return tonumber(string.match(id, '(%d+)$')) or 0
end

-- The shard an id names, as `shards.batch_id_shard` reads it: `<shard>.<seq>`, else shard 0.
local function shard_named(id)
  local head = string.match(id, '^(%d+)%.')
  return head and tonumber(head) or 0
end

-- info is `member\nreason\ncut_ms\nn`. nil when the record is gone; {garbled = true} when it
-- or its id cannot be read (only a hostile writer makes one): such a batch can never run
-- (`bury`). `prefix`: the id prefix of the shard the caller took the id from ('' on a one-shard
-- namespace, else '<shard>.'); an id this shard never makes that names another shard is nil,
-- as if it had no record here (every later call would look for it on the shard it names, so
-- neither a worker nor the dead tools could ever reach it here). nil `prefix`: the caller
-- routed by the id itself.
local function record_info(id, prefix)
  if prefix and not (string.sub(id, 1, #prefix) == prefix and string.find(id, '^%d+$', #prefix + 1)) then
    local here = prefix == '' and 0 or tonumber(string.sub(prefix, 1, -2))
    if shard_named(id) ~= here then return nil end
    return redis.call('HEXISTS', k_info, id) == 1 and {garbled = true} or nil
  end
  local info = redis.call('HGET', k_info, id)
  if not info then return nil end
  if not string.match(id, '^[%d.]+$') then return {garbled = true} end  -- no id distbatch makes
  local member, reason, cut_ms, n = string.match(info, '^(.-)\n(.-)\n(.-)\n(.*)$')
  n = tonumber(n)
  if not n or not string.find(member, '|', 1, true) or (reason ~= 'count' and reason ~= 'expired')
      or #cut_ms > 15 or not string.find(cut_ms, '^%d+$') then
    return {garbled = true}  -- each field as a cut writes it: a worker reads them all
  end
  return {member = member, reason = reason, cut_ms = cut_ms, n = n}
end

-- The batch's try count; nil when it is no integer HINCRBY can count on (a hostile writer's).
local function attempt_of(id)
  local a = redis.call('HGET', k_attempt, id)
  if not a then return 0 end
  if #a > 18 or not string.match(a, '^%-?%d+$') then return nil end
  return tonumber(a)
end

-- The owner field of a ready batch that `reclaim.lua` took back from a claim of several: its
-- worker died with all of them in hand, so which one took it down is not known. `claim.lua`
-- takes it alone next, where a death is its own (no token is this: tokens are hex).
local SUSPECT = '!'

-- A claim's token stops being valid: it leaves the owner and tokens hashes.
local function disown(id)
  local token = redis.call('HGET', k_owner, id)
  if token then
    redis.call('HDEL', k_tokens, token)
    redis.call('HDEL', k_owner, id)
  end
end

local function delete_record(id)
  disown(id)
  redis.call('HDEL', k_events, id)
  redis.call('HDEL', k_info, id)
  redis.call('HDEL', k_attempt, id)
  redis.call('HDEL', k_error, id)
end

-- Fencing: only the claim that holds a live lease may change a running batch.
-- Returns 'ok', 'gone' (no record) or 'stale' (another claim's token, or the lease ran out).
local function check_owner(id, token)
  if redis.call('HEXISTS', k_info, id) == 0 then return 'gone' end
  if redis.call('HGET', k_owner, id) ~= token then return 'stale' end
  local lease = redis.call('ZSCORE', k_running, id)
  if not lease or tonumber(lease) < real_now then return 'stale' end
  return 'ok'
end

-- Why the last try failed: `failed_ms\nfailed_by\noutcome\nerror`.
local function set_error(id, token, outcome, text)
  redis.call('HSET', k_error, id, real_now .. '\n' .. (token or '') .. '\n' .. outcome .. '\n' .. text)
end

-- A batch whose record cannot run (`record_info` garbled, or `attempt_of` nil) goes dead with the
-- reason, where `dead list` shows it, instead of failing the script half-way and leaving the
-- batch in none of ready / running / delayed / dead. Needs the clock include.
local GARBLED = 'garbled batch record: its id, info or try count cannot be read (not written by distbatch)'
local function bury(id)
  disown(id)
  set_error(id, '', 'dead', GARBLED)
  redis.call('ZADD', k_dead, real_now, id)
  redis.call('HINCRBY', k_stats, 'batches_dead', 1)
end
