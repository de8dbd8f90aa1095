-- Mark a batch as fully enqueued; if its requests already all ended, complete it now.
-- KEYS: batch counters. ARGV: now (ms). Returns 1 when this call completed the batch.
redis.call('HSET', KEYS[1], 'sealed', 1)
local c = redis.call('HMGET', KEYS[1], 'total', 'created', 'failed')
if tonumber(c[2] or 0) + tonumber(c[3] or 0) == tonumber(c[1] or 0) then
  return redis.call('HSETNX', KEYS[1], 'completed_at', ARGV[1])
end
return 0
