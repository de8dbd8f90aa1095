-- Record one checkout request and queue its arq job, unless its token is already known.
-- KEYS: checkout record, batch counters, batch members, arq job, arq queue
-- ARGV: idempotency key, checkoutToken, batch, body hash, request JSON, arq job payload,
--       now (ms), record ttl (ms), arq job ttl (ms)
local state = redis.call('HGET', KEYS[1], 'state')
if state then
  if redis.call('HGET', KEYS[1], 'body_hash') ~= ARGV[4] then
    return {'conflict', state, redis.call('HGET', KEYS[1], 'batch')}
  end
  return {'duplicate', state, redis.call('HGET', KEYS[1], 'batch')}
end
redis.call('HSET', KEYS[1],
  'checkout_token', ARGV[2], 'batch', ARGV[3], 'body_hash', ARGV[4], 'request', ARGV[5],
  'state', 'queued', 'attempts', 0, 'enqueued_at', ARGV[7], 'updated_at', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[8])
redis.call('HINCRBY', KEYS[2], 'total', 1)
redis.call('HINCRBY', KEYS[2], 'queued', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('PSETEX', KEYS[4], ARGV[9], ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
return {'enqueued', 'queued', ARGV[3]}
