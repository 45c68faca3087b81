-- What a call reported, kept after its id in its call key (`call_once` reads it on a resend):
-- when it was made, then per item reported: item number, kind, batch id. Not the events: a
-- resend reads them from the record. Called before the queue's length ends `out`.
-- Needs locals: k_call, call_id, out ({now, then item, kind, id, events per item}).
if #out > 1 then
  local notes = {call_id, '|', string.format('%d', out[1]), '\n'}
  for i = 2, #out, 4 do
    notes[#notes + 1] = string.format('%d\n%s\n%s\n', out[i], out[i + 1], out[i + 2])
  end
  redis.call('SET', k_call, table.concat(notes), 'PX', 600000)
end
