-- Take up to n ready batches to run: count each attempt, hold a lease on each under its own token
-- (the caller's token when it takes one batch; `<token>.<i>` for the i-th of several, so that a
-- reclaim knows the batch was not alone in its worker's hand: `reclaim.lua`). With ids, those of
-- them still ready; without, the oldest ready batches. Idempotent per token: a retry after a lost
-- reply gets the same claims back.
-- A suspect batch (its owner field is SUSPECT: reclaimed from a claim of several, so it may be
-- the one that took its worker down) is taken alone: first of a claim, the claim ends with it;
-- met behind another, the claim ends before it (it stays first in line for the next).
-- When no batch is left ready, the shard's bell is silenced: its tokens stand for batches already
-- claimed, and a worker waiting on it must not wake for them.
-- KEYS: the 11 lifecycle keys, the bell
-- ARGV: token, lease_ms, n, the resend width (how many of the call's tokens to look for: at
--       least n; more when the token is an earlier call's of more batches whose replies were
--       lost), the shard's id prefix ('' on a one-shard namespace, else '<shard>.'), then
--       optionally candidate ids
-- Returns {batches still ready, then per claim: id, member, reason, cut_ms, attempt, events,
--          token, how many events the cut took}.
local B = 0
-- @include clock
-- @include lifecycle
local k_full = k_stats
-- @include runs_when_full
local k_bell = KEYS[12]
local token, lease_ms, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local width = math.max(n, tonumber(ARGV[4] or '') or 0)
local prefix = ARGV[5]
local out = {0}

local function token_of(i)
  if i == 1 then return token end
  return token .. '.' .. i
end

local function add(id, info, t)
  local o = #out
  out[o + 1], out[o + 2], out[o + 3], out[o + 4] = id, info.member, info.reason, info.cut_ms
  out[o + 5] = tonumber(redis.call('HGET', k_attempt, id))
  out[o + 6], out[o + 7], out[o + 8] = redis.call('HGET', k_events, id), t, info.n
end

local function finish()
  local left = redis.call('ZCARD', k_ready)
  if left == 0 then redis.call('DEL', k_bell) end
  out[1] = left
  return out
end

-- A resend: any of this call's tokens still names a batch (the first batch may have been
-- reclaimed or completed meanwhile); it gets back the batches its tokens still hold with a live
-- lease, leased afresh from now, as a claim is: a resend can come seconds later (every reply of
-- the first send was lost, and the worker's next claim carries its token).
local resent = false
for i = 1, width do
  local t = token_of(i)
  local id = redis.call('HGET', k_tokens, t)
  if not id and i == 1 then  -- the first batch of a claim of several
    t = token .. '.1'
    id = redis.call('HGET', k_tokens, t)
  end
  if id then
    resent = true
    local info = check_owner(id, t) == 'ok' and record_info(id, prefix)
    if info and not info.garbled and attempt_of(id) then
      redis.call('ZADD', k_running, real_now + lease_ms, id)
      add(id, info, t)
    end
  end
end
if resent then return finish() end

local taken, alone = 0, false
-- A batch leaves `ready` last (as in every lifecycle step): a write that a hostile writer's
-- value fails leaves it ready, never in no set at all.
local function take(id)
  if not redis.call('ZSCORE', k_ready, id) then return end
  local info = record_info(id, prefix)
  if not (info and not info.garbled and attempt_of(id)) then
    if info then bury(id) end  -- can never run
    redis.call('ZREM', k_ready, id)  -- purged or buried: look further
    return
  end
  if redis.call('HGET', k_owner, id) == SUSPECT then
    alone = true
    if taken > 0 then return end
  end
  taken = taken + 1
  local t = token_of(taken)
  redis.call('HINCRBY', k_attempt, id, 1)
  redis.call('HSET', k_owner, id, t)
  redis.call('HSET', k_tokens, t, id)
  redis.call('ZADD', k_running, real_now + lease_ms, id)
  redis.call('ZREM', k_ready, id)
  add(id, info, t)
end

-- The first batch of a claim of several is held under `<token>.1`, like the batches behind it.
local function several()
  if taken > 1 then
    local id = out[2]
    redis.call('HDEL', k_tokens, token)
    redis.call('HSET', k_tokens, token .. '.1', id)
    redis.call('HSET', k_owner, id, token .. '.1')
    out[8] = token .. '.1'
  end
  return finish()
end

if #ARGV > 5 then
  for i = 6, #ARGV do
    if taken == n or alone then break end
    take(ARGV[i])
  end
  return several()
end
for _ = 1, 100 do
  if taken == n or alone then break end
  local heads = redis.call('ZRANGE', k_ready, 0, n - taken - 1)
  if #heads == 0 then break end
  for _, id in ipairs(heads) do
    take(id)
    if alone then break end
  end
end
return several()
