-- What a caller in another language names for a route must be its registered binding's: the
-- binding itself (an unregistered one's events were stored and never delivered), its count and
-- window (another count cut batches above the registered one) and its open set (another
-- binding's let that one's `drop` take these buffers). Checked after the epoch check; either
-- way the call key is put back as it was, and nothing is written. A binding this shard's copy of
-- the registry does not hold is a stale call ({-1, epoch}), not a mistake: a register under way
-- (or cut off) reaches the first shard first, so a caller that read it there routes to it before
-- this copy has it, under the same epoch; the caller brings this copy up to the first shard's
-- (distbatch's `Registry.sync`) and sends again, and a binding not registered at all is then no
-- route of its. The common case costs an HGET and two plain finds: the definition register
-- stores is sorted JSON that starts with the batch's count and whose batch ends with its
-- window_ms (decoded only when that text differs, as an older writer's may).
-- Needs locals: k_bindings, k_call, k_deadlines, prior, current (the epoch, `call_once`).
-- Defines route_refused(r, binding, count, window_ms, open_key): the reply to return, or nil
-- when the route is the registered binding's.
local open_prefix = string.sub(k_deadlines, 1, -11) .. ':open:'
local function route_refused(r, binding, count, window_ms, open_key)
  local bad
  local def = redis.call('HGET', k_bindings, binding)
  local of_route = ' of route ' .. r
  if not def then
    if prior then redis.call('SET', k_call, prior, 'PX', 600000) else redis.call('DEL', k_call) end
    return {-1, current}
  elseif open_key ~= open_prefix .. binding then
    bad = 'open set key="' .. tostring(open_key) .. '"' .. of_route .. ' is not "' .. open_prefix .. binding .. '"'
  else
    local head = '{"batch":{"count":' .. count .. ','
    if string.sub(def, 1, #head) ~= head or not string.find(def, '"window_ms":' .. window_ms .. '}', #head, true) then
      local ok, decoded = pcall(cjson.decode, def)
      local batch = ok and type(decoded) == 'table' and decoded['batch']
      local want_count = type(batch) == 'table' and batch['count']
      local want_window = type(batch) == 'table' and batch['window_ms']
      if want_count ~= tonumber(count) or want_window ~= tonumber(window_ms) then
        bad = 'count="' .. count .. '", window_ms="' .. window_ms .. '"' .. of_route .. ' are not binding "'
          .. binding .. '"\'s registered count=' .. tostring(want_count) .. ', window_ms=' .. tostring(want_window)
      end
    end
  end
  if not bad then return nil end
  if prior then redis.call('SET', k_call, prior, 'PX', 600000) else redis.call('DEL', k_call) end
  return redis.error_reply(bad .. '; nothing was written')
end
