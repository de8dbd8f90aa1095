-- The fleet's rate limit for one API credential: GCRA slots, in-flight leases, 429 pauses.
-- KEYS: pause (until when, µs), tat (GCRA theoretical arrival time, µs), leases (sorted set of
--       lease ids scored by expiry, µs), wake (list a release pushes to), adaptive (hash),
--       slots (sorted set of the slots given, scored by their time, µs)
-- ARGV: operation, rate (calls/s, 0 = unlimited), burst, max in flight (0 = no cap), lease (µs),
--       adaptive ('1'/'0'), recovery period (µs), jitter (µs), then the operation's own
--       arguments:
--   acquire lease-id max-wait-µs -> {1, wait µs, slot µs, slot id}: reserved, sleep until the slot
--                                   {0, wait µs, 0, ''}: the slot is further than max-wait; nothing taken
--                                   {2, µs until the first lease expires, 0, ''}: every lease is held
--     For a checkout job, with two more KEYS (its record, its result) and ARGV now (ms), the
--     batch counters' key prefix, the most attempts and '1' once the job has looked at the
--     record: each answer also holds the attempts (0 when not marked) and the record (its
--     fields, or its result once created, or nil when gone), read in the same call;
--     {3, 0, 0, '', 0, record}, nothing taken, when the record ended (or is gone);
--     {4, 0, 0, '', 0, record}, nothing taken, until the job has looked, when its attempts
--     are spent or an earlier call may have made the session (sent, or in flight);
--     and a slot due now marks the record in flight in the same call, as transition.lua
--     would (a new attempt, sent now): {1, 0, slot µs, slot id, attempts, record}.
--   take slot-id slot-µs         -> {1, now µs}: a sleeper that woke late may call now, and its
--                                   slot is moved to now; {0, 0}: it may not (a 429 came, or no
--                                   window that holds now has room), and its slot is given up,
--                                   back to the schedule: the next slot reserved comes one
--                                   interval sooner, so a busy host's late wake-ups cost no rate
--   release lease-id             -> 1 if the lease was held
--   pause µs                     -> 1 if the rate was lowered (adaptive mode)
--   recover                      -> 1 if the rate was raised (adaptive mode)
-- Every time is the Redis server's clock, so hosts whose clocks disagree share one schedule.
-- Names of fields and states as in paylinks/jobs/layout.py (tests/test_layout.py checks).
local pause_key, tat_key, leases_key, wake_key, adaptive_key, slots_key, record_key, result_key =
  unpack(KEYS)
local op = ARGV[1]
local rate, burst, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lease_us, adaptive, recovery_us = tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local jitter_us = tonumber(ARGV[8])
-- Adaptive mode: a 429 halves the rate, never below a tenth of it; each recovery period
-- without a 429 that sees a successful call gives a tenth back.
local FLOOR, STEP = 0.1, 0.1

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Redis would write a Lua number with 14 significant digits, too few for epoch microseconds.
local function int(x) return string.format('%.0f', x) end

local function ms(us) return int(math.max(1, math.ceil(us / 1000))) end

local function keep(key, us)
  if redis.call('PTTL', key) < us / 1000 then redis.call('PEXPIRE', key, ms(us)) end
end

-- The edge guard. GCRA alone puts rate + burst slots in some closed one-second window (the
-- burst, then a slot every interval up to the window's far end): exactly the ceiling, so a
-- call that reaches the API a little after its slot (a cold connection, a process starved of
-- CPU while others start) lands in a window that already holds the ceiling. Keeping every
-- window of one second plus `jitter` to rate + burst slots absorbs such delays up to jitter.
-- Slots are given in time order, so only the window that ends at the new slot can overflow:
-- past the ceiling, the slot moves to just after the oldest slot that window must lose.
local function clear_edge(t, slot)
  local window = 1000000 + jitter_us
  local ceiling = math.floor(rate) + burst
  redis.call('ZREMRANGEBYSCORE', slots_key, '-inf', '(' .. int(t - window))
  local last = redis.call('ZRANGE', slots_key, -1, -1, 'WITHSCORES')
  if last[2] then slot = math.max(slot, tonumber(last[2])) end
  local inside = redis.call('ZCOUNT', slots_key, int(slot - window), '+inf')
  if inside >= ceiling then
    local oldest = redis.call('ZRANGEBYSCORE', slots_key, int(slot - window), '+inf',
      'WITHSCORES', 'LIMIT', inside - ceiling, 1)
    slot = tonumber(oldest[2]) + window + 1
  end
  return slot
end

local function current_rate()
  if adaptive then
    local lowered = tonumber(redis.call('HGET', adaptive_key, 'rate'))
    if lowered and lowered < rate then return lowered end
  end
  return rate
end

if op == 'acquire' then
  local lease, max_wait = ARGV[9], tonumber(ARGV[10])
  local record, fields, reply = nil, {}, nil
  if record_key then
    -- The job's record read here saves it a round trip; a request another run finished (or
    -- that expired) spends no slot, nor one whose earlier attempts the job must look at.
    record = redis.call('HGETALL', record_key)
    for i = 1, #record, 2 do fields[record[i]] = record[i + 1] end
    local state = fields['state']
    if not state then return {3, 0, 0, '', 0, redis.call('GET', result_key)} end
    if state == 'created' or state == 'failed' then return {3, 0, 0, '', 0, record} end
    local spent = tonumber(fields['attempts'] or 0) >= tonumber(ARGV[13])
    if ARGV[14] ~= '1' and (spent or fields['sent_at'] or state == 'in_progress') then
      return {4, 0, 0, '', 0, record}
    end
    reply = function(answer, wait, slot, id, attempts)
      return {answer, wait, slot, id, attempts or 0, record}
    end
  else
    reply = function(answer, wait, slot, id) return {answer, wait, slot, id} end
  end
  local t = now()
  local start = math.max(t, tonumber(redis.call('GET', pause_key) or 0))
  if cap > 0 then
    -- A killed worker's leases come back here, once they expire.
    redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', int(t))
    if not redis.call('ZSCORE', leases_key, lease) and redis.call('ZCARD', leases_key) >= cap then
      local first = redis.call('ZRANGE', leases_key, 0, 0, 'WITHSCORES')
      return reply(2, tonumber(first[2]) - t, 0, '')
    end
  end
  local slot, tat = start, nil
  if rate > 0 then
    -- GCRA: the slot is reserved now, up to burst - 1 intervals ahead of the schedule.
    local interval = 1000000 / current_rate()
    tat = math.max(tonumber(redis.call('GET', tat_key) or 0), start)
    slot = clear_edge(t, math.max(start, tat - (burst - 1) * interval))
    tat = math.max(tat, slot) + interval
  end
  if slot - t > max_wait then return reply(0, slot - t, 0, '') end
  local id = ''
  if tat then
    redis.call('SET', tat_key, int(tat), 'PX', ms(tat - t))
    -- A slot given back makes tat repeat itself; with the time it was given, never.
    id = int(tat) .. '@' .. int(t)
    redis.call('ZADD', slots_key, int(slot), id)
    redis.call('PEXPIRE', slots_key, ms(slot - t + 1000000 + jitter_us))
  end
  if cap > 0 then
    redis.call('ZADD', leases_key, int(slot + lease_us), lease)
    keep(leases_key, slot + lease_us - t)
  end
  if record_key and slot <= t then
    -- In flight before the call, with its time: a worker dying now leaves the next run of the
    -- job knowing the session may exist.
    local attempts = redis.call('HINCRBY', record_key, 'attempts', 1)
    redis.call('HSET', record_key, 'state', 'in_progress', 'updated_at', ARGV[11],
      'sent_at', ARGV[11])
    local state, batch_key = fields['state'], ARGV[12] .. fields['batch']
    if state ~= 'in_progress' then
      redis.call('HINCRBY', batch_key, state, -1)
      redis.call('HINCRBY', batch_key, 'in_progress', 1)
    end
    return reply(1, 0, slot, id, attempts)
  end
  return reply(1, slot - t, slot, id)
end

if op == 'take' then
  local id, slot = ARGV[9], tonumber(ARGV[10])
  local t = now()
  local paused = tonumber(redis.call('GET', pause_key) or 0) > slot
  if id ~= '' then redis.call('ZREM', slots_key, id) end
  if paused then return {0, 0} end
  if id == '' then return {1, t} end
  -- Every window of one second plus jitter that holds now must keep room for one more slot;
  -- the fullest of them starts at a slot (or at now).
  local window = 1000000 + jitter_us
  local ceiling = math.floor(rate) + burst
  local near = redis.call('ZRANGEBYSCORE', slots_key, int(t - window), int(t + window),
    'WITHSCORES')
  local times, placed = {}, false
  for i = 2, #near, 2 do
    local at = tonumber(near[i])
    if not placed and at > t then times[#times + 1], placed = t, true end
    times[#times + 1] = at
  end
  if not placed then times[#times + 1] = t end
  local hi = 1
  for lo = 1, #times do
    if times[lo] > t then break end
    if times[lo] >= t - window then
      while hi <= #times and times[hi] <= times[lo] + window do hi = hi + 1 end
      if hi - lo > ceiling then
        -- Given back: the schedule is one interval shorter (never reaching back before now,
        -- which would open a burst); the edge guard still counts every slot given.
        local tat = tonumber(redis.call('GET', tat_key) or 0)
        if tat > t then
          tat = math.max(t, tat - 1000000 / current_rate())
          redis.call('SET', tat_key, int(tat), 'PX', ms(tat - t))
        end
        return {0, 0}
      end
    end
  end
  redis.call('ZADD', slots_key, int(t), id)
  keep(slots_key, window)
  return {1, t}
end

if op == 'release' then
  if redis.call('ZREM', leases_key, ARGV[9]) == 0 then return 0 end
  -- One wake-up per freed lease; the list never holds more than there are leases.
  redis.call('LPUSH', wake_key, '1')
  redis.call('LTRIM', wake_key, 0, cap - 1)
  redis.call('PEXPIRE', wake_key, ms(lease_us))
  return 1
end

if op == 'pause' then
  local pause_us = tonumber(ARGV[9])
  local t = now()
  local paused_until = tonumber(redis.call('GET', pause_key) or 0)
  if pause_us > 0 and t + pause_us > paused_until then
    paused_until = t + pause_us
    redis.call('SET', pause_key, int(paused_until), 'PX', ms(pause_us))
  end
  if not adaptive or rate <= 0 then return 0 end
  -- 429s answered to calls sent before the last cut say nothing about the lowered rate.
  if t < tonumber(redis.call('HGET', adaptive_key, 'hold') or 0) then return 0 end
  redis.call('HSET', adaptive_key,
    'rate', math.max(rate * FLOOR, current_rate() / 2),
    'at', int(t),
    'hold', int(math.max(paused_until, t + recovery_us)))
  -- Forgotten once a full recovery's time has passed without a 429.
  redis.call('PEXPIRE', adaptive_key, ms(recovery_us / STEP))
  return 1
end

if op == 'recover' then
  local state = redis.call('HMGET', adaptive_key, 'rate', 'at')
  local lowered = tonumber(state[1])
  if not lowered then return 0 end
  local t = now()
  if t - tonumber(state[2]) < recovery_us then return 0 end
  lowered = lowered + rate * STEP
  -- Half a step short of the configured rate is float rounding, not a rate to keep.
  if lowered > rate - rate * STEP / 2 then
    redis.call('DEL', adaptive_key)
  else
    redis.call('HSET', adaptive_key, 'rate', lowered, 'at', int(t))
  end
  return 1
end

return redis.error_reply('unknown operation ' .. tostring(op))
