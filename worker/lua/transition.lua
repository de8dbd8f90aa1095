-- Move a checkout record to a new state and keep its batch's counters in step.
-- KEYS: checkout record, batch counters, dead letters
-- ARGV: idempotency key, new state, now (ms), '1' to count a new attempt,
--       then field/value pairs to store ('' removes the field: an empty field costs memory)
-- Returns {attempts, 1 if the batch's requests have all ended}. A record already final is
-- left as it is, but still reports its batch, so a job run again after dying between its
-- last move and the batch's completion completes the batch then.
-- Names of fields and states as in paylinks/jobs/layout.py (tests/test_layout.py checks).
local function all_ended()
  local c = redis.call('HMGET', KEYS[2], 'total', 'created', 'failed')
  if tonumber(c[2] or 0) + tonumber(c[3] or 0) == tonumber(c[1] or 0) then return 1 end
  return 0
end
local old = redis.call('HGET', KEYS[1], 'state')
if not old then return {0, 0} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or 0)
if old == 'created' or old == 'failed' then return {attempts, all_ended()} end
local new = ARGV[2]
if ARGV[4] == '1' then attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
redis.call('HSET', KEYS[1], 'state', new, 'updated_at', ARGV[3])
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if new == 'created' then
  -- The body is never sent again: its digest is all that telling a duplicate from a
  -- conflict needs. The record is written anew without it, because Redis keeps a hash in its
  -- large encoding once a value (the body) outgrew its compact one (hash-max-listpack-value),
  -- even after that value is gone; written anew, it is compact when its values fit.
  local fields = redis.call('HGETALL', KEYS[1])
  local kept, body = {}, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'request' then
      body = fields[i + 1]
    else
      kept[#kept + 1] = fields[i]
      kept[#kept + 1] = fields[i + 1]
    end
  end
  if body then
    local ttl = redis.call('PTTL', KEYS[1])
    kept[#kept + 1] = 'request_digest'
    kept[#kept + 1] = redis.sha1hex(body)
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], unpack(kept))
    if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
  end
end
if old ~= new then
  redis.call('HINCRBY', KEYS[2], old, -1)
  redis.call('HINCRBY', KEYS[2], new, 1)
end
if new == 'failed' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
if new == 'created' or new == 'failed' then return {attempts, all_ended()} end
return {attempts, 0}
