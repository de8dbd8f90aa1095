-- Record a chunk of checkout requests and queue their arq jobs; a token already known is
-- reported, not queued again. One call per chunk keeps intake to one round trip per chunk.
-- Record, result and job keys are built here from their prefixes (so a non-cluster Redis only).
-- The batch is opened with its first new request: a run that adds none leaves no batch.
-- KEYS: batch counters, batch members, arq queue, recent batches
-- ARGV: batch id, now (ms), ttl (ms), checkout record key prefix, arq job key prefix,
--       arq job payload before and after its key, webhook url (or ''), result key prefix,
--       then per request: key, checkoutToken, body
-- Returns only the requests not enqueued, each {position in the chunk (from 1),
-- outcome (duplicate|conflict), the record's state, the record's batch, and for a conflict
-- the record's body (none once it is created)}: most chunks are all new, and an answer per
-- request cost more than the rest of the reply.
-- Names of fields and states as in paylinks/jobs/layout.py (tests/test_layout.py checks).
local RESULT_FIELDS = {'request_digest', 'batch', 'checkout_token', 'attempts', 'enqueued_at',
  'updated_at', 'session_id', 'url', 'expires_at', 'http_status', 'error',
  'duplicate_sessions'}
local SEPARATOR = '\031'
-- A created request's result as HMGET gives a record's {state, request, batch, digest}.
local function known_result(result)
  local values, i = {}, 1
  for value in string.gmatch(result .. SEPARATOR, '([^' .. SEPARATOR .. ']*)' .. SEPARATOR) do
    values[RESULT_FIELDS[i]] = value
    i = i + 1
  end
  return {'created', false, values['batch'], values['request_digest']}
end
local batch, now, ttl, webhook = ARGV[1], ARGV[2], ARGV[3], ARGV[8]
local answers, members, scored = {}, {}, {}
for i = 10, #ARGV, 3 do
  local key, token, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local record, result = ARGV[4] .. key, ARGV[9] .. key
  if redis.call('EXISTS', record, result) > 0 then
    -- Bodies are canonical JSON, so the same request is the same string. A record of an
    -- earlier release may hold it in another key order: the producer compares those parsed.
    local known = redis.call('HMGET', record, 'state', 'request', 'batch', 'request_digest')
    if not known[1] then known = known_result(redis.call('GET', result)) end
    local position = (i - 7) / 3
    -- A created request keeps only its body's digest (whole in a record of the release
    -- before results): hashed here, for a token sent again.
    local digest = known[4]
    if known[2] == body or (digest and digest ~= '' and not known[2]
        and string.sub(redis.sha1hex(body), 1, #digest) == digest) then
      answers[#answers + 1] = {position, 'duplicate', known[1], known[3]}
    else
      answers[#answers + 1] = {position, 'conflict', known[1], known[3], known[2]}
    end
  else
    redis.call('HSET', record, 'checkout_token', token, 'batch', batch, 'request', body,
      'state', 'queued', 'attempts', 0, 'enqueued_at', now, 'updated_at', now)
    redis.call('PEXPIRE', record, ttl)
    redis.call('PSETEX', ARGV[5] .. key, ttl, ARGV[6] .. key .. ARGV[7])
    members[#members + 1] = key
    scored[#scored + 1] = now
    scored[#scored + 1] = key
  end
end
-- One variadic call each for the chunk (at most 500 requests: well within unpack's limit).
if #members > 0 then
  -- Held open until the producer seals it after its last chunk, so that it completes once.
  redis.call('HSET', KEYS[1], 'sealed', '0')
  redis.call('HDEL', KEYS[1], 'completed_at')
  redis.call('HSETNX', KEYS[1], 'created_at', now)
  if webhook ~= '' then
    redis.call('HSET', KEYS[1], 'webhook_url', webhook)
  end
  redis.call('ZADD', KEYS[4], 'NX', now, batch)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], 0, tonumber(now) - tonumber(ttl))
  redis.call('RPUSH', KEYS[2], unpack(members))
  redis.call('ZADD', KEYS[3], unpack(scored))
  redis.call('HINCRBY', KEYS[1], 'total', #members)
  redis.call('HINCRBY', KEYS[1], 'queued', #members)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return answers
