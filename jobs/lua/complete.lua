-- Complete a batch exactly once: when it is sealed and every one of its requests ended.
-- KEYS: batch counters, completion stream, arq job (webhook), arq queue
-- ARGV: batch id, now (ms), webhook job id, webhook job payload, stream max length
-- Returns 1 when this call completed the batch.
-- Names of fields and states as in paylinks/jobs/layout.py (tests/test_layout.py checks).
local c = redis.call('HMGET', KEYS[1], 'total', 'created', 'failed', 'sealed', 'webhook_url')
local total, created, failed = tonumber(c[1] or 0), tonumber(c[2] or 0), tonumber(c[3] or 0)
if c[4] ~= '1' or created + failed ~= total then return 0 end
if redis.call('HSETNX', KEYS[1], 'completed_at', ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'batch', ARGV[1], 'total', total, 'created', created, 'failed', failed, 'completed_at', ARGV[2])
if c[5] then
  redis.call('PSETEX', KEYS[3], 86400000, ARGV[4])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
end
return 1
