-- Record a chunk of checkout requests and queue their arq jobs; a token already known is
-- reported, not queued again. One call per chunk keeps intake to one round trip per chunk.
-- Record and job keys are built here from their prefixes (so a non-cluster Redis only).
-- KEYS: batch counters, batch members, arq queue
-- ARGV: batch id, now (ms), ttl (ms), checkout record key prefix, arq job key prefix,
--       arq job payload before and after its key, then per request: key, checkoutToken, body
-- Returns per request {outcome (enqueued|duplicate|conflict), state, the record's batch}.
local batch, now, ttl = ARGV[1], ARGV[2], ARGV[3]
local answers, added = {}, 0
for i = 8, #ARGV, 3 do
  local key, token, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local record = ARGV[4] .. key
  local hash = redis.sha1hex(body)
  local known = redis.call('HMGET', record, 'state', 'body_hash', 'batch')
  if known[1] then
    local outcome = known[2] == hash and 'duplicate' or 'conflict'
    answers[#answers + 1] = {outcome, known[1], known[3]}
  else
    redis.call('HSET', record, 'checkout_token', token, 'batch', batch, 'body_hash', hash,
      'request', body, 'state', 'queued', 'attempts', 0, 'enqueued_at', now, 'updated_at', now)
    redis.call('PEXPIRE', record, ttl)
    redis.call('RPUSH', KEYS[2], key)
    redis.call('PSETEX', ARGV[5] .. key, ttl, ARGV[6] .. key .. ARGV[7])
    redis.call('ZADD', KEYS[3], now, key)
    added = added + 1
    answers[#answers + 1] = {'enqueued', 'queued', batch}
  end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'total', added)
  redis.call('HINCRBY', KEYS[1], 'queued', added)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return answers
