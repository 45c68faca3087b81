-- Shared by every script that opens, cuts or removes a buffer.
-- Needs locals: bufp, openp, batchp, k_deadlines, k_seq, k_ready, k_stats, real_now.
-- @include binding_of

-- A buffer that is gone leaves no trace: its list, its deadline and its open-set entry.
local function close_buffer(member, binding)
  redis.call('DEL', bufp .. member)
  redis.call('ZREM', k_deadlines, member)
  redis.call('SREM', openp .. binding, member)
end

-- Record a cut batch and make it ready, in the same step that emptied the buffer. Ready batches
-- are ordered by id (= cut order), so a retried or reclaimed batch goes back ahead of every
-- batch cut after it instead of behind the backlog.
local function cut_batch(member, binding, events, reason)
  local seq = redis.call('INCR', k_seq)
  local id = tostring(seq)
  redis.call('HSET', batchp .. id, 'member', member, 'reason', reason, 'cut_ms', real_now,
             'n', #events, 'events', table.concat(events), 'attempt', 0)
  redis.call('ZADD', k_ready, seq, id)
  redis.call('HINCRBY', k_stats, 'batches_' .. reason .. ':' .. binding, 1)
  return id
end
