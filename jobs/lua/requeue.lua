-- Give a dead letter another chance under the same idempotency key.
-- KEYS: checkout record, batch counters, batch members, dead letters, arq job, arq queue,
--       arq in-progress
-- ARGV: idempotency key, arq job payload, now (ms), ttl (ms)
-- Returns 1 when queued again, 0 when the request is not failed, -1 while its last job is
-- still being cleaned up by arq (queuing now would let arq delete the new job).
-- Names of fields and states as in paylinks/jobs/layout.py (tests/test_layout.py checks).
if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then return 0 end
if redis.call('EXISTS', KEYS[7]) == 1 then return -1 end
-- `sent_at` stays: if the last attempt went unanswered, the next one looks for its session.
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'error', '', 'http_status', '',
  'error_code', '', 'error_type', '', 'trace_id', '', 'response', '', 'updated_at', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'failed', -1)
redis.call('HINCRBY', KEYS[2], 'queued', 1)
redis.call('HDEL', KEYS[2], 'completed_at')
-- The request lives on, and so must what it is counted and listed in.
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('PSETEX', KEYS[5], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
return 1
