-- Fencing: only the claim that holds a live lease may change a running batch.
-- Needs locals: k_running, key (the batch hash), id, real_now.
-- Returns 'ok', 'gone' (no record) or 'stale' (another claim's token, or the lease ran out).
local function check_owner(token)
  if redis.call('EXISTS', key) == 0 then return 'gone' end
  if redis.call('HGET', key, 'owner') ~= token then return 'stale' end
  local lease = redis.call('ZSCORE', k_running, id)
  if not lease or tonumber(lease) < real_now then return 'stale' end
  return 'ok'
end
