-- Shared by every script that opens, cuts or removes a buffer.
-- Needs locals: k_deadlines, k_seq, k_bindings, id_prefix, real_now, and the cut keys.
-- @include binding_of

-- A buffer that is gone leaves no trace: its list, its deadline and its open-set entry.
local function close_buffer(key, member, open_key)
  redis.call('DEL', key)
  redis.call('ZREM', k_deadlines, member)
  redis.call('SREM', open_key, member)
end

-- The next batch id: taken before the buffer it names is emptied, so a sequence that cannot
-- count (a hostile writer's value; past 2^53, where a Lua number skips) fails the call before any
-- event is lost. Never below the server's clock in ms x 1000: a sequence Redis lost (a new
-- namespace, a restart without persistence) or got back older (an RDB snapshot, the last second
-- of an `everysec` AOF, a replica behind its failed master) goes on above every id handed out
-- before, unless over 1000 batches a millisecond were cut on average since, or the server's clock
-- went back. So a handler that skips ids it has seen never skips a new batch.
local function next_seq()
  local seq = redis.call('INCR', k_seq)
  local floor = real_now * 1000
  if seq < floor then
    seq = floor
    redis.call('SET', k_seq, string.format('%d', seq))
  elseif seq >= 9007199254740992 then
    error('batch sequence ' .. k_seq .. ' is past 2^53 (' .. seq .. '): not written by distbatch')
  end
  return seq, id_prefix .. string.format('%d', seq)
end

-- Record a cut batch and make it ready, in the same step that empties the buffer (`seq`, `id`:
-- `next_seq()`, taken before; the buffer is emptied after, so a write that fails loses nothing).
-- Ready batches are ordered by sequence number (= cut order), so a retried or reclaimed batch
-- goes back ahead of every batch cut after it instead of behind the backlog. `blob`: the events
-- concatenated (the caller's reply carries the same string: one concatenation per cut, not two).
local function cut_batch(seq, id, member, binding, blob, n, reason)
  redis.call('HSET', k_events, id, blob)
  redis.call('HSET', k_info, id, member .. '\n' .. reason .. '\n' .. real_now .. '\n' .. n)
  redis.call('HSET', k_attempt, id, 0)
  redis.call('ZADD', k_ready, seq, id)
  redis.call('HINCRBY', k_stats, 'batches_' .. reason .. ':' .. binding, 1)
  return id
end

-- A discarded buffer still gets an id (callers report it), but no record.
local function discard_batch(id, binding, n)
  redis.call('HINCRBY', k_stats, 'batches_discarded:' .. binding, 1)
  redis.call('HINCRBY', k_stats, 'events_discarded:' .. binding, n)
  return id
end

-- How a binding's expired buffers end, read once per call: 'fire_partial' or 'discard'; 'none'
-- when the binding is not registered, 'unreadable' when its definition is no JSON object with a
-- `batch.expire_action` register writes (a hostile writer's).
local actions = {}
local function expire_action(binding)
  local action = actions[binding]
  if action == nil then
    local def = redis.call('HGET', k_bindings, binding)
    action = 'none'
    if def then
      local ok, decoded = pcall(cjson.decode, def)
      local batch = ok and type(decoded) == 'table' and decoded['batch']
      local a = type(batch) == 'table' and batch['expire_action']
      if a == 'discard' then action = 'discard'
      elseif a == 'fire_partial' or a == 'fire' or (type(batch) == 'table' and a == nil) then
        action = 'fire_partial'
      else action = 'unreadable' end
    end
    actions[binding] = action
  end
  return action
end
