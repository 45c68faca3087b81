-- Wake workers that linger for batches: they block on the bell (`Records.wait_and_claim`) instead
-- of polling. One token per batch made ready; at most 8 are kept, so a bell nobody waits on stays
-- small and wakes the next listeners only a few times for nothing.
local function ring(k_bell, n)
  if n < 1 then return end
  local tokens = {}
  for i = 1, math.min(n, 8) do tokens[i] = 1 end
  -- pcall: the bell only wakes workers early, so a bell that is no list (a hostile writer) must
  -- not fail, half-done, the call that rings it; the next claim that finds none ready deletes it
  local len = redis.pcall('LPUSH', k_bell, (table.unpack or unpack)(tokens))
  if type(len) == 'number' and len > 8 then
    redis.call('LTRIM', k_bell, 0, 7)
  end
end
