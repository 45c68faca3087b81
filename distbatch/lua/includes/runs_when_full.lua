-- Redis past `maxmemory` with `noeviction` refuses a script's first write that may grow memory
-- (HSET, ZADD, HINCRBY, SET...), and lets a script that has written run to its end. This
-- script moves or removes what distbatch holds, which is how workers and operators get memory
-- back (complete, purge, drop), how a running batch keeps its lease, and how batches already
-- in keep moving; so it opens with a write that Redis never refuses for memory and that changes
-- nothing: HDEL of the empty field, which no binding, counter or batch id is. Emits and
-- registrations go without it: past `maxmemory` Redis refuses them, as it should.
-- Needs: k_full, a hash key of the call.
redis.call('HDEL', k_full, '')
