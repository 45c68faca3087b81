-- Retries whose backoff is over become ready again (ordered by id, so ahead of newer batches).
-- KEYS: delayed, ready
-- ARGV: limit
-- Returns {promoted, earliest remaining due time or -1, server time}.
-- @include clock
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', real_now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], tonumber(id), id)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, first[2] and tonumber(first[2]) or -1, real_now}
