-- A call that removes what it reports (buffers drained or flushed) cannot make its reply again
-- once its reply is lost: it keeps the reply under its own call id (`T:kept:<call id>`, 1 min:
-- a resend comes within the client's retries), and a resend returns that instead of running.
-- Needs local k_kept. `kept_reply()`: the reply kept by an earlier run of this call ({} if none),
-- flat, every element a string.
local function kept_reply() return redis.call('LRANGE', k_kept, 0, -1) end
local function keep_reply(flat)
  for i = 1, #flat, 1000 do  -- Lua's stack takes a few thousand arguments at most
    redis.call('RPUSH', k_kept, (table.unpack or unpack)(flat, i, math.min(i + 999, #flat)))
  end
  redis.call('PEXPIRE', k_kept, 60000)
end
