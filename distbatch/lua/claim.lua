-- Take a ready batch to run: count the attempt, hold a lease under the caller's token.
-- With ids, the first of them still ready; without, the oldest ready batch. Idempotent per
-- token: a retry after a lost reply gets the same claim back.
-- When no batch is left ready, the shard's bell is silenced: its tokens stand for batches already
-- claimed, and a worker waiting on it must not wake for them.
-- KEYS: the 11 lifecycle keys, the bell
-- ARGV: token, lease_ms, then optionally candidate ids
-- Returns {} when nothing is claimable, else {id, member, reason, cut_ms, attempt, events,
--         batches still ready}.
local B = 0
-- @include clock
-- @include lifecycle
local k_bell = KEYS[12]
local token, lease_ms = ARGV[1], tonumber(ARGV[2])

local function left()
  local n = redis.call('ZCARD', k_ready)
  if n == 0 then redis.call('DEL', k_bell) end
  return n
end

local function answer(id, info)
  return {id, info.member, info.reason, info.cut_ms, tonumber(redis.call('HGET', k_attempt, id)),
          redis.call('HGET', k_events, id), left()}
end

local prior = redis.call('HGET', k_tokens, token)
if prior and redis.call('HGET', k_owner, prior) == token then return answer(prior, record_info(prior)) end

local function take(id)
  if redis.call('ZREM', k_ready, id) == 0 then return nil end
  local info = record_info(id)
  if not info then return nil end  -- purged: look further
  redis.call('HINCRBY', k_attempt, id, 1)
  redis.call('HSET', k_owner, id, token)
  redis.call('HSET', k_tokens, token, id)
  redis.call('ZADD', k_running, real_now + lease_ms, id)
  return answer(id, info)
end

if #ARGV > 2 then
  for i = 3, #ARGV do
    local claimed = take(ARGV[i])
    if claimed then return claimed end
  end
  left()
  return {}
end
for _ = 1, 100 do
  local head = redis.call('ZRANGE', k_ready, 0, 0)[1]
  if not head then break end
  local claimed = take(head)
  if claimed then return claimed end
end
left()
return {}
