-- Shared by every script that opens, cuts or removes a buffer.
-- Needs locals: bufp, openp, batchp, k_deadlines, k_seq, k_ready, k_stats, grace, real_now.
local function binding_of(member)
  return string.sub(member, 1, string.find(member, '|', 1, true) - 1)
end

-- A buffer that is gone leaves no trace: its list, its deadline and its open-set entry.
local function close_buffer(member, binding)
  redis.call('DEL', bufp .. member)
  redis.call('ZREM', k_deadlines, member)
  redis.call('SREM', openp .. binding, member)
end

-- Record a cut batch and make it due for hand-off, in the same step that emptied the buffer.
local function cut_batch(member, binding, events, reason)
  local id = tostring(redis.call('INCR', k_seq))
  redis.call('HSET', batchp .. id, 'member', member, 'reason', reason, 'cut_ms', real_now,
             'n', #events, 'events', table.concat(events), 'attempt', 0)
  redis.call('ZADD', k_ready, real_now + grace, id)
  redis.call('HINCRBY', k_stats, 'batches_' .. reason .. ':' .. binding, 1)
  return id
end
