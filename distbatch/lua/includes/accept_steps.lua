-- The less common steps of taking an event into a buffer, shared by accumulate and
-- accumulate_one: closing a buffer found expired, the cap, the cut at count.
-- Needs: the buffers include and k_deadlines, k_stats.
-- @include buffers

-- The item's own buffer ran out before this event (no sweeper got to it): close it. Returns
-- kind ('expired' = cut, 'discard'), batch id and the events, or nil when it was not due.
local function close_if_expired(key, member, open_key, binding, now)
  local deadline = redis.call('ZSCORE', k_deadlines, member)
  if not deadline or tonumber(deadline) > now then return nil end
  local events = redis.call('LRANGE', key, 0, -1)
  if #events == 0 then
    close_buffer(key, member, open_key)
    return nil
  end
  local action = expire_action(binding)  -- read, as the id is taken, before the buffer goes
  local seq, id = next_seq()
  close_buffer(key, member, open_key)
  local blob = table.concat(events)
  if action == 'discard' then
    return 'discard', discard_batch(id, binding, #events), blob
  end
  return 'expired', cut_batch(seq, id, member, binding, blob, #events, 'expired'), blob
end

-- The buffer reached its count: cut it. Returns the batch id and the events.
local function cut_full(key, member, open_key, binding)
  local events = redis.call('LRANGE', key, 0, -1)
  local seq, id = next_seq()
  close_buffer(key, member, open_key)
  local blob = table.concat(events)
  return cut_batch(seq, id, member, binding, blob, #events, 'count'), blob
end

-- Past the cap: the oldest event goes, and is counted.
local function drop_oldest(key, binding)
  redis.call('LPOP', key)
  redis.call('HINCRBY', k_stats, 'events_overflowed:' .. binding, 1)
end
