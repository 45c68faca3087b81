-- Append events to their buffers; open windows; enforce the cap; cut batches at `count`.
-- An event whose buffer's window already ran out (no sweeper got to it yet) never joins it: the
-- expired buffer is flushed first (cut as 'expired', or discarded), and the event opens a fresh
-- buffer and window, as if a sweeper had run just before.
-- KEYS: regver, call (this emitter's last call id), deadlines, wake (pub/sub channel), batchseq,
--       bindings, ready, stats, rec:events, rec:info, rec:attempt, then the open-set key of
--       each route, then the buffer key of each item (an item is one event for one route),
--       then optionally the RQ queue of the namespace's tickets (on the same Redis): its length
--       is returned when a batch was cut, so the caller's hand-off needs no round trip of its own;
--       after it, optionally the workers' bell (a token per batch made ready); "" in place of
--       the queue passes the bell alone
-- ARGV: expected_regver, call_id, window_now ('' = server TIME), cap, batch id prefix,
--       buffer key prefix, n_routes, then per route: binding, count, window_ms; then per item:
--       its event's msgpack bytes, preceded by the item's route number when n_routes > 1
-- Returns {-1, current_regver} when the caller's bindings are stale (nothing written),
--         {-2} when this call id already ran (a retry after a lost reply; nothing written again),
--         followed by what that call reported if it reported anything (`call_once`),
--         else {real_now, then per notable item: item number (1-based), kind, batch_id, events}
--         with kind 'count' (cut at count), 'expired' (the expired buffer it closed, cut),
--         'discard' (the expired buffer it closed, discarded) or 'overflow' (cap: oldest
--         dropped; id and events ''). Items with nothing to report are left out. With the
--         queue key, one more element ends the reply: the queue's length if a batch was cut and
--         made ready, else -1.
local k_regver, k_call, k_deadlines, k_wake, k_seq, k_bindings =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local B = 6
local call_id, expected_regver = ARGV[2], ARGV[1]
local keep_ttl, checked = false, false
-- What a caller in another language may get wrong is refused here, by name, before anything is
-- written (an error after a write leaves the call half-done): the numbers, each item's route,
-- and of the first item of each route its event's first byte (a msgpack array: an event sent as
-- a map, or its bytes sent as text, is refused; a client that gets one wrong gets all wrong) and
-- its buffer key (the prefix and binding its member is read by). An event spoiled otherwise (cut
-- short) makes the batch it joins undecodable (`codec.decode_events`), by name.
local bad = nil
do
  local function whole(s)
    local v = tonumber(s)
    return v and v >= 1 and v % 1 == 0 and v
  end
  local function quoted(name, s) return name .. '="' .. tostring(s) .. '"' end
  local nr = whole(ARGV[7])
  if not whole(ARGV[4]) then bad = quoted('cap', ARGV[4]) .. ' is not a whole number of at least 1'
  elseif not nr or #ARGV < 7 + 3 * nr then bad = quoted('n_routes', ARGV[7]) .. ' is not the number of routes given'
  elseif ARGV[3] ~= '' and not tonumber(ARGV[3]) then bad = quoted('window_now', ARGV[3]) .. " is neither '' nor a number"
  else
    for r = 1, nr do
      if not whole(ARGV[6 + 3 * r]) then
        bad = quoted('count', ARGV[6 + 3 * r]) .. ' of route ' .. r .. ' is not a whole number of at least 1'
      elseif not whole(ARGV[7 + 3 * r]) then
        bad = quoted('window_ms', ARGV[7 + 3 * r]) .. ' of route ' .. r .. ' is not a whole number of at least 1'
      end
      if bad then break end
    end
    local first_ev, bufp = 7 + 3 * nr, ARGV[6]
    if not bad and (string.sub(KEYS[3], 1, -11) .. ':buf:' ~= bufp or string.sub(KEYS[3], -10) ~= ':deadlines') then
      bad = quoted('buffer key prefix', bufp) .. ' is not the tag of the deadlines key ' .. quoted('', KEYS[3])
        .. " followed by ':buf:'"
    end
    local items = #ARGV - first_ev
    if nr > 1 then items = items / 2 end
    if not bad and items % 1 ~= 0 then bad = 'the last item has no event after its route number' end
    local seen = {}
    for item = 1, bad and 0 or items do
      local r, data = 1, ARGV[first_ev + item]
      if nr > 1 then
        r, data = whole(ARGV[first_ev + 2 * item - 1]), ARGV[first_ev + 2 * item]
        if not r or r > nr then
          bad = quoted('route', ARGV[first_ev + 2 * item - 1]) .. ' of item ' .. item .. ' is not 1 to ' .. nr
          break
        end
      end
      if not seen[r] then
        seen[r] = true
        local b, key, binding = string.byte(data, 1), KEYS[11 + nr + item], ARGV[5 + 3 * r]
        if not b or b < 0x94 or (b > 0x9f and b ~= 0xdc and b ~= 0xdd) then
          bad = 'item ' .. item .. ': its event is no msgpack array [id, source, emitted_at_ms, payload] ('
            .. (b and string.format('first byte 0x%02x', b) or 'it is empty') .. ')'
        elseif not key or string.find(key, bufp, 1, true) ~= 1 or string.find(key, binding, #bufp + 1, true) ~= #bufp + 1
            or string.byte(key, #bufp + #binding + 1) ~= 124 then
          bad = 'item ' .. item .. ': ' .. quoted('buffer key', key) .. ' does not start with the buffer key prefix '
            .. 'and its route\'s binding, ' .. quoted('prefix', bufp) .. ' .. ' .. quoted('binding', binding) .. " .. '|'"
        end
        if bad or nr == 1 then break end  -- one route: its first item is all
      end
    end
  end
end
if bad then return redis.error_reply(bad .. '; nothing was written') end
-- @include call_once
-- @include route_registered
for r = 1, tonumber(ARGV[7]) do
  local refused = route_refused(r, ARGV[5 + 3 * r], ARGV[6 + 3 * r], ARGV[7 + 3 * r], KEYS[11 + r])
  if refused then return refused end
end
-- @include clock
-- @include cut_keys
local cap, id_prefix, bufp, nroutes = tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
-- @include accept_steps
-- @include bell
local now = real_now
if (ARGV[3] or '') ~= '' then now = tonumber(ARGV[3]) end

local bindings, counts, windows = {}, {}, {}
for r = 1, nroutes do
  bindings[r] = ARGV[5 + 3 * r]
  counts[r] = tonumber(ARGV[6 + 3 * r])
  windows[r] = tonumber(ARGV[7 + 3 * r])
end
local first_open, first_buffer, first_event = 11, 11 + nroutes, 7 + 3 * nroutes

local out = {real_now}
local accepted = {}  -- per route: events taken
for r = 1, nroutes do accepted[r] = 0 end
-- Earliest open deadline (nil = no open window). When it has not passed, no buffer of this shard
-- has run out and no item needs its own deadline read (one ZRANGE instead of a ZSCORE per
-- item); when it has, each item's buffer is checked, and it is read again (false = not read
-- yet) once expired buffers are closed, when this call opens a window.
local first = redis.call('ZRANGE', k_deadlines, 0, 0, 'WITHSCORES')
local earliest = first[2] and tonumber(first[2])
local any_due = earliest ~= nil and earliest <= now
if any_due then earliest = false end
-- What to publish on the wake channel: a deadline earlier than any open before this call
-- (`before`, false until read). 'recheck' when the buffer whose deadline it was got cut in this
-- call too (count 1, or a chunk that fills it): the earliest is read again at the end.
local woke, wake_member, before = false, nil, false

local function report(item, kind, id, blob)
  out[#out + 1] = item
  out[#out + 1] = kind
  out[#out + 1] = id
  out[#out + 1] = blob
end

-- The events taken are counted once per route at the end; and before a failed step raises
-- (`undo_push`), those taken before the failing one (`failing`: its route), which stay stored.
local function count_in(failing)
  if failing then accepted[failing] = accepted[failing] - 1 end
  for r = 1, nroutes do
    if accepted[r] > 0 then redis.call('HINCRBY', k_stats, 'events_in:' .. bindings[r], accepted[r]) end
  end
end

local items = #ARGV - first_event
if nroutes > 1 then items = items / 2 end
local extra = #KEYS - first_buffer - items
local k_queue = extra >= 1 and KEYS[first_buffer + items + 1] ~= '' and KEYS[first_buffer + items + 1] or nil
local k_bell = extra >= 2 and KEYS[first_buffer + items + 2] or nil
local made_ready = 0  -- batches made ready
local member_at = #bufp + 1
for item = 1, items do
  local r, data = 1, ARGV[first_event + item]
  if nroutes > 1 then
    r, data = tonumber(ARGV[first_event + 2 * item - 1]), ARGV[first_event + 2 * item]
  end
  local binding, count = bindings[r], counts[r]
  local key, open_key = KEYS[first_buffer + item], KEYS[first_open + r]
  -- the buffer's member (its key less the prefix), made only where needed: most items only
  -- append, and a Lua string per item is an allocation and a hash
  local member = nil
  if any_due then
    member = string.sub(key, member_at)
    local kind, id, blob = close_if_expired(key, member, open_key, binding, now)
    if kind then
      report(item, kind, id, blob)
      if kind == 'expired' then made_ready = made_ready + 1 end
    end
  end
  local n = redis.call('RPUSH', key, data)
  accepted[r] = accepted[r] + 1
  if n == 1 then
    member = member or string.sub(key, member_at)
    if earliest == false then
      local first = redis.call('ZRANGE', k_deadlines, 0, 0, 'WITHSCORES')
      earliest = first[2] and tonumber(first[2])
    end
    if before == false then before = earliest end
    local closes = now + windows[r]
    redis.call('ZADD', k_deadlines, closes, member)
    redis.call('SADD', open_key, member)
    if earliest == nil or closes < earliest then
      earliest, woke, wake_member = closes, true, member
    end
  end
  if n > cap then
    local ok, err = pcall(drop_oldest, key, binding)
    if not ok then count_in(r); undo_push(key, err) end
    n = cap
    report(item, 'overflow', '', '')
  end
  if n >= count then
    member = member or string.sub(key, member_at)
    local ok, id, blob = pcall(cut_full, key, member, open_key, binding, n, count)
    if not ok then count_in(r); undo_push(key, id) end
    report(item, 'count', id, blob)
    made_ready = made_ready + 1
    if member == wake_member then woke = 'recheck' end
  end
end
count_in(nil)
if woke == 'recheck' then
  local first = redis.call('ZRANGE', k_deadlines, 0, 0, 'WITHSCORES')
  earliest = first[2] and tonumber(first[2])
  woke = earliest ~= nil and (before == nil or earliest < before)
end
if woke then
  redis.call('PUBLISH', k_wake, earliest)
end
-- @include remember_notes
if made_ready > 0 and k_bell then ring(k_bell, made_ready) end
if k_queue then  -- pcall: a queue key that is no list (a hostile writer) must not fail, half-done,
  -- the emit; 0 makes the client try its hand-off, which says what is wrong
  local queued = made_ready > 0 and redis.pcall('LLEN', k_queue) or -1
  out[#out + 1] = type(queued) == 'number' and queued or 0
end
return out
