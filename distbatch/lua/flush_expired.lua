-- Cut (fire_partial) or discard every buffer whose window ran out, at most `limit` per call.
-- KEYS: deadlines, batchseq, ready, stats, bindings
-- ARGV: window_now ('' = server TIME), limit, buf_prefix, open_prefix, batch_prefix,
--       with_events ('1' to return the events of each batch)
-- Returns {earliest remaining deadline or -1, server time (ms), then per batch:
--          {id, member, 'expired', discarded 0/1, cut_ms, events or ''}}.
local k_deadlines, k_seq, k_ready, k_stats, k_bindings = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local limit = tonumber(ARGV[2])
local bufp, openp, batchp = ARGV[3], ARGV[4], ARGV[5]
-- @include clock
-- @include buffers
local now = window_clock(ARGV[1])
local with_events = ARGV[6] == '1'

local actions = {}
local out = {-1, real_now}
local due = redis.call('ZRANGEBYSCORE', k_deadlines, '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  local binding = binding_of(member)
  local events = redis.call('LRANGE', bufp .. member, 0, -1)
  close_buffer(member, binding)
  if #events > 0 then
    local action = actions[binding]
    if action == nil then
      local def = redis.call('HGET', k_bindings, binding)
      action = def and cjson.decode(def)['batch']['expire_action'] or 'fire_partial'
      actions[binding] = action
    end
    local id, discarded
    if action == 'discard' then
      id = tostring(redis.call('INCR', k_seq))
      discarded = 1
      redis.call('HINCRBY', k_stats, 'batches_discarded:' .. binding, 1)
      redis.call('HINCRBY', k_stats, 'events_discarded:' .. binding, #events)
    else
      id = cut_batch(member, binding, events, 'expired')
      discarded = 0
    end
    out[#out + 1] = {id, member, 'expired', discarded, real_now,
                     with_events and table.concat(events) or ''}
  end
end
local first = redis.call('ZRANGE', k_deadlines, 0, 0, 'WITHSCORES')
if first[2] then out[1] = tonumber(first[2]) end
return out
