-- Wake a worker that lingers for batches: it blocks on the bell (`Records.wait_ready`) instead
-- of polling. One token per call that made batches ready; at most 8 are kept, so a bell nobody
-- waits on stays small and wakes the next listeners only a few times for nothing.
local function ring(k_bell)
  if redis.call('LPUSH', k_bell, 1) > 8 then redis.call('LTRIM', k_bell, 0, 7) end
end
