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

-- The buffer reached its count (`n`: its length now): cut it (the buffer last, as above).
-- Returns the batch id and the events. Never more than `count` events: a buffer holds more only
-- if a cut failed before (a hostile writer's value; the callers undo the event of a failed cut,
-- so it takes a write from outside), and then the oldest `count` go and the rest stay, open.
local function cut_full(key, member, open_key, binding, n, count)
  local events = redis.call('LRANGE', key, 0, count - 1)
  local seq, id = next_seq()
  local blob = table.concat(events)
  cut_batch(seq, id, member, binding, blob, #events, 'count')
  if n > count then
    redis.call('LTRIM', key, count, -1)
  else
    close_buffer(key, member, open_key)
  end
  return id, blob
end

-- Past the cap: the oldest event goes, and is counted (the count first: a write that fails
-- then drops nothing).
local function drop_oldest(key, binding)
  redis.call('HINCRBY', k_stats, 'events_overflowed:' .. binding, 1)
  redis.call('LPOP', key)
end

-- A step after an event's RPUSH failed (a hostile writer's value: a sequence that cannot count,
-- a record hash or `ready` of another type): the event is taken back out of its buffer, so a
-- buffer never stays at its count uncut (its next event would make a batch above count), and
-- the error goes on to fail the call. Returns nothing: it raises.
local function undo_push(key, err)
  redis.call('RPOP', key)
  error(err, 0)
end
