-- The call id first: a retry of a call that ran must not be re-run after a reload either. One
-- SET ... GET takes the id and says whether it was taken before (Redis 6.2+); a stale call puts
-- the previous id back, so that a resend of it is refused as stale again, never taken as run.
-- A call that had something to report (a cut, an expired buffer closed, an overflow) left its
-- notes after its id and a '|' (`remember_notes`; a call id holding '|' is refused): its resend
-- reports them again, so the caller learns which batches its lost reply named.
-- Needs locals: k_call, k_regver, call_id, expected_regver, B (the cut keys' offset), checked
-- (the call comes from distbatch's own client, which never sends an older call id), and
-- keep_ttl: true where the caller knows its call key has a TTL set within the last half of it
-- (`SET ... KEEPTTL` costs less than setting the TTL anew on every call). Returns
-- from the script: {-2} when this call id already ran and reported nothing, {-2, then what it
-- reported} when it did (each batch's events as its record holds them, '' once delivered or
-- discarded), {-1, current_regver} when the caller's bindings are stale.
if string.find(call_id, '|', 1, true) then  -- it would read as one followed by notes
  return redis.error_reply('call_id must not contain "|": ' .. call_id .. '; nothing was written')
end
local prior
if keep_ttl then
  prior = redis.call('SET', k_call, call_id, 'KEEPTTL', 'GET')
  if not prior then redis.call('PEXPIRE', k_call, 600000) end  -- it was gone (a restart): no TTL kept
else
  prior = redis.call('SET', k_call, call_id, 'PX', 600000, 'GET')
end
if prior == call_id then return {-2} end
if prior and #prior > #call_id + 2 and string.byte(prior, #call_id + 1) == 124
    and string.sub(prior, 1, #call_id) == call_id
    and string.find(prior, '^%d+\n', #call_id + 2) then  -- '<call_id>|<ms>\n<notes>'
  redis.call('SET', k_call, prior, 'PX', 600000)  -- a further resend reports them too
  local out, k_events = {-2}, KEYS[B + 3]
  local fields = {}
  for f in string.gmatch(string.sub(prior, #call_id + 2), '([^\n]*)\n') do fields[#fields + 1] = f end
  out[2] = tonumber(fields[1])
  for i = 2, #fields, 3 do
    local kind, id = fields[i + 1], fields[i + 2]
    local blob = (kind == 'count' or kind == 'expired') and redis.call('HGET', k_events, id) or ''
    out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = tonumber(fields[i]), kind, id, blob
  end
  return out
end
-- Call ids that are numbers only grow per emitter (distbatch's are a counter): an older one is a
-- call resent after a later call of its emitter ran, whose id the call key no longer holds, so
-- whether it ran cannot be told. It runs nothing, and says so (the wire format asks for one call
-- in flight per emitter id; a caller that keeps to it never meets this).
-- Only digits count, and few enough to compare exactly ('12e45678', random hex, is no number);
-- inline: a function here would be a closure made on every call.
local older = not checked and prior and #call_id <= 15 and not string.find(call_id, '%D') and tonumber(call_id)
if older then
  local last = prior
  if #last > 15 or string.find(last, '%D') then last = string.match(prior, '^(%d+)|') or '' end
  last = last ~= '' and #last <= 15 and tonumber(last)
  if last and older < last then
    redis.call('SET', k_call, prior, 'PX', 600000)
    return redis.error_reply('call_id=' .. call_id .. ' is older than the last call of its emitter (' .. last
      .. '): a resend after a later call under the same emitter id ran, so whether it ran before cannot be '
      .. 'told; nothing was written now (one call in flight per emitter id)')
  end
end
local current = redis.call('GET', k_regver) or ''
if current ~= expected_regver then
  if prior then redis.call('SET', k_call, prior, 'PX', 600000) else redis.call('DEL', k_call) end
  return {-1, current}
end
