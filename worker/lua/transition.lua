-- Move a checkout record to a new state and keep its batch's counters in step.
-- KEYS: checkout record, batch counters, dead letters, result, and to finish the request's
--       arq job as it ends (what arq's `finish_job` would do next, a round trip saved): the
--       arq queue, and the job's job, in-progress and retry keys
-- ARGV: idempotency key (the arq job id), new state, now (ms), '1' to count a new attempt,
--       then field/value pairs to store ('' removes the field: an empty field costs memory)
-- Returns {attempts, 1 if the batch's requests have all ended, 1 if this call finished the
-- arq job}. A record already final is
-- left as it is, but still reports its batch, so a job run again after dying between its
-- last move and the batch's completion completes the batch then.
-- A record moved to created becomes its result: one string of RESULT_FIELDS joined by the
-- separator, trailing empty ones left out, with the record's expiry; the record is deleted.
-- Its outcome fields are those of this call only: an empty one need not be sent.
-- Names of fields and states as in paylinks/jobs/layout.py (tests/test_layout.py checks).
local RESULT_FIELDS = {'request_digest', 'batch', 'checkout_token', 'attempts', 'enqueued_at',
  'updated_at', 'session_id', 'url', 'expires_at', 'http_status', 'error',
  'duplicate_sessions'}
local SEPARATOR, DIGEST_LENGTH = '\031', 20
-- One value of a result, by its field's name.
local function result_value(result, name)
  local i = 1
  for value in string.gmatch(result .. SEPARATOR, '([^' .. SEPARATOR .. ']*)' .. SEPARATOR) do
    if RESULT_FIELDS[i] == name then return value end
    i = i + 1
  end
end
local function all_ended()
  local c = redis.call('HMGET', KEYS[2], 'total', 'created', 'failed')
  if tonumber(c[2] or 0) + tonumber(c[3] or 0) == tonumber(c[1] or 0) then return 1 end
  return 0
end
local old = redis.call('HGET', KEYS[1], 'state')
if not old then
  -- Created already, or gone.
  local result = redis.call('GET', KEYS[4])
  if not result then return {0, 0, 0} end
  return {tonumber(result_value(result, 'attempts')) or 0, all_ended(), 0}
end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or 0)
if old == 'created' or old == 'failed' then return {attempts, all_ended(), 0} end
local new = ARGV[2]
if ARGV[4] == '1' then attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
if new == 'created' then
  -- The body is never sent again: its digest is all that telling a duplicate from a
  -- conflict needs, and what results, the dashboard and status read fits one short string.
  -- What the request was, from the record; how it ended, from this call alone (an earlier
  -- attempt's error is not the result's).
  local values, asked = {}, {'request', 'batch', 'checkout_token', 'enqueued_at'}
  local record = redis.call('HMGET', KEYS[1], unpack(asked))
  for i, name in ipairs(asked) do
    if record[i] then values[name] = record[i] end
  end
  for i = 5, #ARGV, 2 do values[ARGV[i]] = ARGV[i + 1] end
  values['attempts'] = attempts
  values['updated_at'] = tonumber(ARGV[3]) - tonumber(values['enqueued_at'] or ARGV[3])
  if values['request'] then
    values['request_digest'] = string.sub(redis.sha1hex(values['request']), 1, DIGEST_LENGTH)
  end
  local packed, last = {}, 0
  for i, name in ipairs(RESULT_FIELDS) do
    packed[i] = string.gsub(tostring(values[name] or ''), SEPARATOR, ' ')
    if packed[i] ~= '' then last = i end
  end
  local ttl = redis.call('PTTL', KEYS[1])
  local result = table.concat(packed, SEPARATOR, 1, last)
  if ttl > 0 then
    redis.call('SET', KEYS[4], result, 'PX', ttl)
  else
    redis.call('SET', KEYS[4], result)
  end
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'state', new, 'updated_at', ARGV[3])
  for i = 5, #ARGV, 2 do
    if ARGV[i + 1] == '' then
      redis.call('HDEL', KEYS[1], ARGV[i])
    else
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    end
  end
end
if old ~= new then
  redis.call('HINCRBY', KEYS[2], old, -1)
  redis.call('HINCRBY', KEYS[2], new, 1)
end
if new == 'failed' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
if new ~= 'created' and new ~= 'failed' then return {attempts, 0, 0} end
if not KEYS[5] then return {attempts, all_ended(), 0} end
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[6], KEYS[7], KEYS[8])
return {attempts, all_ended(), 1}
