-- Take the first candidate batch that is still ready: count the attempt, hold a lease under the
-- caller's token. Idempotent per token: a retry after a lost reply gets the same claim back.
-- KEYS: ready, running, then the batch hash of each candidate (same order as the ids in ARGV)
-- ARGV: token, lease_ms, candidate ids...
-- Returns {} when no candidate is ready, else {id, member, reason, cut_ms, attempt, events}.
-- @include clock
local k_ready, k_running = KEYS[1], KEYS[2]
local token, lease_ms = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
  local id, key = ARGV[i], KEYS[i]
  local mine = redis.call('HGET', key, 'owner') == token
  if mine or redis.call('ZREM', k_ready, id) == 1 then
    local attempt
    if mine then
      attempt = tonumber(redis.call('HGET', key, 'attempt'))
    elseif redis.call('EXISTS', key) == 0 then
      attempt = nil  -- a ready id without a record (purged): drop it and look further
    else
      attempt = redis.call('HINCRBY', key, 'attempt', 1)
      redis.call('HSET', key, 'owner', token)
      redis.call('ZADD', k_running, real_now + lease_ms, id)
    end
    if attempt then
      local r = redis.call('HMGET', key, 'member', 'reason', 'cut_ms', 'events')
      return {id, r[1], r[2], r[3], attempt, r[4]}
    end
  end
end
return {}
