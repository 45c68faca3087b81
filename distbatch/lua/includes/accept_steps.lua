-- The less common steps of taking an event into a buffer, shared by accumulate and
-- accumulate_one: closing a buffer found expired, the cap, the cut at count.
-- Needs: the buffers include and k_deadlines, k_stats.
-- @include buffers

-- The item's own buffer ran out before this event (no sweeper got to it): close it. Returns
-- kind ('expired' = cut, 'discard'), batch id and the events, or nil when it was not due. As
-- in every cut, the buffer goes last: a write that a hostile writer's value fails (the sequence,
-- a record hash of the wrong type) fails the call with every event still in its buffer.
local function close_if_expired(key, member, open_key, binding, now)
  local deadline = redis.call('ZSCORE', k_deadlines, member)
  if not deadline or tonumber(deadline) > now then return nil end
  local events = redis.call('LRANGE', key, 0, -1)
  if #events == 0 then
    close_buffer(key, member, open_key)
    return nil
  end
  local seq, id = next_seq()
  local blob = table.concat(events)
  local kind = 'expired'
  if expire_action(binding) == 'discard' then
    kind = 'discard'
    discard_batch(id, binding, #events)
  else
    cut_batch(seq, id, member, binding, blob, #events, 'expired')
  end
  close_buffer(key, member, open_key)
  return kind, id, blob
end

-- The buffer reached its count: cut it (the buffer last, as above). Returns the batch id and
-- the events.
local function cut_full(key, member, open_key, binding)
  local events = redis.call('LRANGE', key, 0, -1)
  local seq, id = next_seq()
  local blob = table.concat(events)
  cut_batch(seq, id, member, binding, blob, #events, 'count')
  close_buffer(key, member, open_key)
  return id, blob
end

-- Past the cap: the oldest event goes, and is counted.
local function drop_oldest(key, binding)
  redis.call('LPOP', key)
  redis.call('HINCRBY', k_stats, 'events_overflowed:' .. binding, 1)
end
