-- Take a ready batch to run: count the attempt, hold a lease under the caller's token.
-- With ids, the first of them still ready; without, the oldest ready batch. Idempotent per
-- token: a retry after a lost reply gets the same claim back.
-- KEYS: the 11 lifecycle keys
-- ARGV: token, lease_ms, then optionally candidate ids
-- Returns {} when nothing is claimable, else {id, member, reason, cut_ms, attempt, events}.
local B = 0
-- @include clock
-- @include lifecycle
local token, lease_ms = ARGV[1], tonumber(ARGV[2])

local function answer(id)
  local info = record_info(id)
  return {id, info.member, info.reason, info.cut_ms, tonumber(redis.call('HGET', k_attempt, id)),
          redis.call('HGET', k_events, id)}
end

local prior = redis.call('HGET', k_tokens, token)
if prior and redis.call('HGET', k_owner, prior) == token then return answer(prior) end

local function take(id)
  if redis.call('ZREM', k_ready, id) == 0 then return false end
  if redis.call('HEXISTS', k_info, id) == 0 then return false end  -- purged: look further
  redis.call('HINCRBY', k_attempt, id, 1)
  redis.call('HSET', k_owner, id, token)
  redis.call('HSET', k_tokens, token, id)
  redis.call('ZADD', k_running, real_now + lease_ms, id)
  return true
end

if #ARGV > 2 then
  for i = 3, #ARGV do
    if take(ARGV[i]) then return answer(ARGV[i]) end
  end
  return {}
end
for _ = 1, 100 do
  local head = redis.call('ZRANGE', k_ready, 0, 0)[1]
  if not head then return {} end
  if take(head) then return answer(head) end
end
return {}
