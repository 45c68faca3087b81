-- Shared by every script that opens, cuts or removes a buffer.
-- Needs locals: k_deadlines, k_seq, k_bindings, id_prefix, real_now, and the cut keys.
-- @include binding_of

-- A buffer that is gone leaves no trace: its list, its deadline and its open-set entry.
local function close_buffer(key, member, open_key)
  redis.call('DEL', key)
  redis.call('ZREM', k_deadlines, member)
  redis.call('SREM', open_key, member)
end

-- Record a cut batch and make it ready, in the same step that emptied the buffer. Ready batches
-- are ordered by sequence number (= cut order), so a retried or reclaimed batch goes back ahead
-- of every batch cut after it instead of behind the backlog. `blob`: the events concatenated
-- (the caller's reply carries the same string: one concatenation per cut, not two).
local function cut_batch(member, binding, blob, n, reason)
  local seq = redis.call('INCR', k_seq)
  local id = id_prefix .. seq
  redis.call('HSET', k_events, id, blob)
  redis.call('HSET', k_info, id, member .. '\n' .. reason .. '\n' .. real_now .. '\n' .. n)
  redis.call('HSET', k_attempt, id, 0)
  redis.call('ZADD', k_ready, seq, id)
  redis.call('HINCRBY', k_stats, 'batches_' .. reason .. ':' .. binding, 1)
  return id
end

-- A discarded buffer still gets an id (callers report it), but no record.
local function discard_batch(binding, n)
  local id = id_prefix .. redis.call('INCR', k_seq)
  redis.call('HINCRBY', k_stats, 'batches_discarded:' .. binding, 1)
  redis.call('HINCRBY', k_stats, 'events_discarded:' .. binding, n)
  return id
end

-- How a binding's expired buffers end, read once per call: nil when it is not registered.
local actions = {}
local function expire_action(binding)
  local action = actions[binding]
  if action == nil then
    local def = redis.call('HGET', k_bindings, binding)
    action = def and cjson.decode(def)['batch']['expire_action'] or false
    actions[binding] = action
  end
  return action or nil
end
