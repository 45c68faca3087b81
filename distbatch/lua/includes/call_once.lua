-- The call id first: a retry of a call that ran must not be re-run after a reload either. One
-- SET ... GET takes the id and says whether it was taken before (Redis 6.2+); a stale call puts
-- the previous id back, so that a resend of it is refused as stale again, never taken as run.
-- Needs locals: k_call, k_regver, call_id, expected_regver. Returns from the script: {-2} when
-- this call id already ran, {-1, current_regver} when the caller's bindings are stale.
local prior = redis.call('SET', k_call, call_id, 'PX', 600000, 'GET')
if prior == call_id then return {-2} end
local current = redis.call('GET', k_regver) or ''
if current ~= expected_regver then
  if prior then redis.call('SET', k_call, prior, 'PX', 600000) else redis.call('DEL', k_call) end
  return {-1, current}
end
