-- Cut (fire_partial) or discard the candidate buffers whose window ran out.
-- The caller reads the earliest deadlines first (ZRANGE) and passes those buffers' keys, so the
-- script names every key it touches; it checks each deadline again itself. A due buffer that
-- cannot be closed holds up no other (each would be first in every later flush, and keep every
-- emit of the shard on its slow path): one whose binding is not registered (a `drop` cut short
-- between its steps) or whose definition cannot be read keeps its events, for `drop` to return,
-- and is looked at again a minute later; an entry that is no buffer distbatch makes (a member
-- without a binding, a key that is no list: a hostile writer's) is no longer tracked.
-- KEYS: deadlines, batchseq, bindings, ready, stats, rec:events, rec:info, rec:attempt, this
--       call's kept reply, the workers' bell, then per candidate: buffer key, open-set key of
--       its binding
-- ARGV: window_now ('' = server TIME), batch id prefix, buffer key prefix,
--       with_events ('1' to return the events of each batch)
-- Returns {earliest remaining deadline or -1, server time (ms), candidates not yet due,
--          {member, why ('none', 'unreadable', 'junk'), ...} of those put off or untracked,
--          then per batch: {id, member, 'expired', discarded 0/1, cut_ms, events or '',
--          late_ms (window clock minus the deadline: how late the cut came), events' number}};
--          with events, a
--          resend of a call that cut or discarded returns the same (those buffers are gone by
--          then; a cut batch's events as its record holds them, '' once delivered).
local k_deadlines, k_seq, k_bindings, k_kept = KEYS[1], KEYS[2], KEYS[3], KEYS[9]
local B = 3
-- @include cut_keys
local k_full = k_stats
-- @include runs_when_full
local with_events = ARGV[4] == '1'
-- @include kept_reply
local kept = with_events and kept_reply() or {}  -- kept only with events (below)
if #kept > 0 then
  local out = {tonumber(kept[1]), tonumber(kept[2]), tonumber(kept[3]), {}}
  for i = 4, #kept, 7 do
    local blob = kept[i + 5]  -- a discarded batch's events; a cut one's are in its record
    if kept[i + 3] == '0' then blob = redis.call('HGET', k_events, kept[i]) or '' end
    out[#out + 1] = {kept[i], kept[i + 1], kept[i + 2], tonumber(kept[i + 3]), tonumber(kept[i + 4]),
                     blob, tonumber(kept[i + 6])}
  end
  return out
end
-- @include clock
local id_prefix, bufp = ARGV[2], ARGV[3]
-- @include buffers
local now = real_now
if (ARGV[1] or '') ~= '' then now = tonumber(ARGV[1]) end

local out = {-1, real_now, 0, {}}
local skipped = out[4]
local made_ready = 0  -- batches cut
for i = 11, #KEYS, 2 do
  local key, open_key = KEYS[i], KEYS[i + 1]
  local member = string.sub(key, #bufp + 1)
  local deadline = redis.call('ZSCORE', k_deadlines, member)
  local binding = binding_of(member)
  local action = binding and expire_action(binding) or 'junk'
  local events = nil
  if not deadline or tonumber(deadline) > now then
    out[3] = out[3] + 1
    action = nil
  elseif action == 'fire_partial' or action == 'discard' then
    events = redis.pcall('LRANGE', key, 0, -1)
    if events.err then action, events = 'junk', nil end  -- no list
  end
  if events then
    if #events > 0 then  -- the record first, the buffer last (accept_steps' close_if_expired)
      local seq, id = next_seq()
      local discarded, blob = 0, ''
      if action == 'discard' then
        discarded = 1
        discard_batch(id, binding, #events)
        if with_events then blob = table.concat(events) end
      else
        blob = table.concat(events)
        cut_batch(seq, id, member, binding, blob, #events, 'expired')
        made_ready = made_ready + 1
        if not with_events then blob = '' end
      end
      out[#out + 1] = {id, member, 'expired', discarded, real_now, blob, now - tonumber(deadline), #events}
    end
    close_buffer(key, member, open_key)
  elseif action == 'junk' then  -- the key itself is left as it is: it holds no events of ours
    redis.call('ZREM', k_deadlines, member)
    if binding then redis.call('SREM', open_key, member) end
    skipped[#skipped + 1], skipped[#skipped + 2] = member, action
  elseif action then  -- 'none', 'unreadable'
    redis.call('ZADD', k_deadlines, 'XX', now + 60000, member)
    skipped[#skipped + 1], skipped[#skipped + 2] = member, action
  end
end
local first = redis.call('ZRANGE', k_deadlines, 0, 0, 'WITHSCORES')
if first[2] then out[1] = tonumber(first[2]) end
if made_ready > 0 then
  -- @include bell
  ring(KEYS[10], made_ready)
end
-- Kept only for a caller that takes the events (`Batcher.flush_expired`): a sweeper's lost reply
-- costs nothing its next passes do not make good (the batches are ready and handed off), and at
-- its rate the kept replies would add up.
if with_events and #out > 4 then
  local flat = {out[1], out[2], out[3]}
  for i = 5, #out do
    local row = out[i]
    flat[#flat + 1], flat[#flat + 2], flat[#flat + 3], flat[#flat + 4] = row[1], row[2], row[3], row[4]
    flat[#flat + 1], flat[#flat + 2], flat[#flat + 3] = row[5], row[4] == 1 and row[6] or '', row[7]
  end
  keep_reply(flat)
end
return out
