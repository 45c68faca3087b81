-- accumulate.lua for one event and one binding (a single emit): the same steps and reply, without
-- the per-item loop and per-route tables, and with the parts that change per call at the end, so
-- the client packs the rest of the call once. The less common steps (an expired buffer, the cap,
-- a cut) are made into functions only when one is needed: a closure made on every call costs.
-- KEYS: regver, call (this emitter's last call id), deadlines, wake (pub/sub channel), batchseq,
--       bindings, ready, stats, rec:events, rec:info, rec:attempt, the route's open-set key,
--       optionally the RQ queue of the namespace's tickets (on the same Redis; "" for none) and
--       after it, optionally, the workers' bell; last the buffer key
-- ARGV: expected_regver, cap, batch id prefix, buffer key prefix, binding, count, window_ms,
--       window_now ('' = server TIME), call_id, the event's msgpack bytes, optionally '1': keep the
--       call key's TTL (the caller set it within the last half of it; else it is set again), or
--       'c' / '1c': the same, from distbatch's own client, which built the call from its keys and
--       checked what the script checks for a caller in another language
-- Returns what accumulate.lua returns for one item (its item number is 1).
local k_regver, k_call, k_deadlines, k_wake, k_seq, k_bindings =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local B = 6
local flags = ARGV[11]
local call_id, expected_regver = ARGV[9], ARGV[1]
local keep_ttl, checked = flags == '1' or flags == '1c', flags == 'c' or flags == '1c'
local cap, count = tonumber(ARGV[2]), tonumber(ARGV[6])
-- As accumulate.lua: what another language's caller may get wrong is refused, by name, before
-- anything is written (about 2 µs, which distbatch's own single emit, `checked`, does not pay).
if not checked then
  if #ARGV < 10 then
    return redis.error_reply(#ARGV .. ' arguments, where accumulate_one takes 10 or 11; nothing was written')
  end
  local bad, w, key, binding = nil, tonumber(ARGV[7]), KEYS[#KEYS], ARGV[5]
  if not cap or cap < 1 or cap % 1 ~= 0 then bad = 'cap="' .. tostring(ARGV[2]) .. '"'
  elseif not count or count < 1 or count % 1 ~= 0 then bad = 'count="' .. tostring(ARGV[6]) .. '"'
  elseif not w or w < 1 or w % 1 ~= 0 then bad = 'window_ms="' .. tostring(ARGV[7]) .. '"' end
  if bad then
    bad = bad .. ' is not a whole number of at least 1'
  elseif ARGV[8] ~= '' and not tonumber(ARGV[8]) then
    bad = 'window_now="' .. tostring(ARGV[8]) .. "\" is neither '' nor a number"
  else
    local b, n = string.byte(ARGV[10], 1), #ARGV[4]
    if string.sub(KEYS[3], 1, -11) .. ':buf:' ~= ARGV[4] or string.sub(KEYS[3], -10) ~= ':deadlines' then
      bad = 'buffer key prefix="' .. ARGV[4] .. '" is not the tag of the deadlines key "' .. KEYS[3]
        .. "\" followed by ':buf:'"
    elseif not b or b < 0x94 or (b > 0x9f and b ~= 0xdc and b ~= 0xdd) then
      bad = 'the event is no msgpack array [id, source, emitted_at_ms, payload] ('
        .. (b and string.format('first byte 0x%02x', b) or 'it is empty') .. ')'
    elseif string.find(key, ARGV[4], 1, true) ~= 1 or string.find(key, binding, n + 1, true) ~= n + 1
        or string.byte(key, n + #binding + 1) ~= 124 then
      bad = 'buffer key="' .. key .. '" does not start with the buffer key prefix and the binding, prefix="'
        .. ARGV[4] .. '" .. binding="' .. binding .. "\" .. '|'"
    end
  end
  if bad then return redis.error_reply(bad .. '; nothing was written') end
end
-- @include call_once
if not checked then
  -- @include route_registered
  local refused = route_refused(1, ARGV[5], ARGV[6], ARGV[7], KEYS[12])
  if refused then return refused end
end
-- @include clock
local now = real_now
if ARGV[8] ~= '' then now = tonumber(ARGV[8]) end
local key, open_key, binding, member_at = KEYS[#KEYS], KEYS[12], ARGV[5], #ARGV[4] + 1
local out = {real_now}
local made_ready = 0  -- batches made ready
local member = nil
local steps = nil

-- Only when some open deadline has passed can this event's buffer have run out. ZCOUNT, not the
-- earliest deadline's ZRANGE ... WITHSCORES: an integer reply, no score formatted and read back
-- (about 1 µs of a ~11 µs call); the earliest is read only when this event opens a window. The
-- time as a string (`real_ms`, or the caller's): a Lua number would be formatted by "%.17g".
if redis.call('ZCOUNT', k_deadlines, '-inf', ARGV[8] ~= '' and ARGV[8] or real_ms) > 0 then
  -- @include one_steps
  member = string.sub(key, member_at)
  local kind, id, blob = steps.close_if_expired(key, member, open_key, binding, now)
  if kind then
    steps.report(kind, id, blob)
    if kind == 'expired' then made_ready = 1 end
  end
end
local woke = false  -- the deadline to publish: a new earliest one, unless cut at once
local n = redis.call('RPUSH', key, ARGV[10])
if n == 1 then
  member = member or string.sub(key, member_at)
  local first = redis.call('ZRANGE', k_deadlines, 0, 0, 'WITHSCORES')
  local earliest = first[2] and tonumber(first[2])
  local closes = now + tonumber(ARGV[7])
  redis.call('ZADD', k_deadlines, closes, member)
  redis.call('SADD', open_key, member)
  woke = (earliest == nil or closes < earliest) and closes
end
if n > cap then
  -- @include one_steps
  local ok, err = pcall(steps.drop_oldest, key, binding)
  if not ok then steps.undo_push(key, err) end
  n = cap  -- as accumulate.lua: at the cap
  steps.report('overflow', '', '')
end
if n >= count then
  -- @include one_steps
  local ok, id, blob = pcall(steps.cut_full, key, member or string.sub(key, member_at), open_key, binding,
                             n, count)
  if not ok then steps.undo_push(key, id) end
  steps.report('count', id, blob)
  made_ready = made_ready + 1
  woke = false  -- opened and cut in this call (count 1): no window to wake a sweeper for
end
redis.call('HINCRBY', KEYS[8], 'events_in:' .. binding, '1')  -- after the steps that can fail; '1', not 1: as above
if woke then
  redis.call('PUBLISH', k_wake, woke)
end
-- @include remember_notes
if #KEYS >= 14 then
  if made_ready > 0 and #KEYS == 15 then
    -- @include bell
    ring(KEYS[14], made_ready)
  end
  if KEYS[13] ~= '' then  -- pcall: as accumulate.lua
    local queued = made_ready > 0 and redis.pcall('LLEN', KEYS[13]) or -1
    out[#out + 1] = type(queued) == 'number' and queued or 0
  end
end
return out
