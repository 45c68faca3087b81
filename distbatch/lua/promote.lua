-- Retries whose backoff is over become ready again (by sequence number: ahead of newer batches).
-- KEYS: the 11 lifecycle keys, the bell
-- ARGV: limit
-- Returns {promoted, earliest remaining due time or -1, server time}.
local B = 0
-- @include clock
-- @include lifecycle
local k_full = k_stats
-- @include runs_when_full
-- @include bell
local due = redis.call('ZRANGEBYSCORE', k_delayed, '-inf', real_now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('ZADD', k_ready, seq_of(id), id)  -- then out of `delayed`: a failed write moves nothing
  redis.call('ZREM', k_delayed, id)
end
ring(KEYS[12], #due)
local first = redis.call('ZRANGE', k_delayed, 0, 0, 'WITHSCORES')
return {#due, first[2] and tonumber(first[2]) or -1, real_now}
