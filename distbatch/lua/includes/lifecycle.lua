-- The batch-lifecycle keys of one shard, taken from KEYS at offset B (set before the include):
-- ready, running, delayed, dead, stats, then the rec:* hashes in which a batch record is one
-- field (the batch id) each: events, info, attempt, owner, tokens, error.
local k_ready, k_running, k_delayed, k_dead, k_stats =
  KEYS[B + 1], KEYS[B + 2], KEYS[B + 3], KEYS[B + 4], KEYS[B + 5]
local k_events, k_info, k_attempt, k_owner, k_tokens, k_error =
  KEYS[B + 6], KEYS[B + 7], KEYS[B + 8], KEYS[B + 9], KEYS[B + 10], KEYS[B + 11]

-- A batch id is `<prefix><seq>`; its sequence number orders `ready` (oldest first).
local function seq_of(id)
  return tonumber(string.match(id, '(%d+)$'))
end

-- info is `member\nreason\ncut_ms\nn`.
local function record_info(id)
  local info = redis.call('HGET', k_info, id)
  if not info then return nil end
  local member, reason, cut_ms, n = string.match(info, '^(.-)\n(.-)\n(.-)\n(.*)$')
  return {member = member, reason = reason, cut_ms = cut_ms, n = tonumber(n)}
end

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
