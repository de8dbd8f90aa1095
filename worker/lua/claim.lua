-- Claim queued arq jobs for one worker in one call, as arq's `Worker.start_jobs` claims one
-- job per WATCH/EXISTS/ZSCORE/MULTI round: a job is claimed when no worker runs it (no
-- in-progress key) and it is due on the queue; claiming sets its in-progress key. It also
-- makes, for each job claimed, the read arq's `Worker.run_job` makes first (its job, and its
-- retry counter counted up and kept for a day), a round trip a job saved.
-- KEYS: arq queue
-- ARGV: now (ms), in-progress lifetime (ms), arq in-progress key prefix, arq job key prefix,
--       arq retry key prefix, the retry counter's lifetime (s), most jobs to claim, then the
--       job ids read from the queue, in its order
-- Returns {job id, score, job (false once expired), try, ...} of the jobs claimed, in the
-- queue's order.
local now, lifetime, prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local job_prefix, retry_prefix, retry_lifetime = ARGV[4], ARGV[5], ARGV[6]
local most = tonumber(ARGV[7])
local claimed = {}
for i = 8, #ARGV do
  if #claimed >= 4 * most then break end
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  -- Gone from the queue (finished), deferred by another worker, or running elsewhere.
  if score and tonumber(score) <= now and redis.call('EXISTS', prefix .. id) == 0 then
    redis.call('PSETEX', prefix .. id, lifetime, '1')
    local try = redis.call('INCR', retry_prefix .. id)
    redis.call('EXPIRE', retry_prefix .. id, retry_lifetime)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = score
    claimed[#claimed + 1] = redis.call('GET', job_prefix .. id)
    claimed[#claimed + 1] = try
  end
end
return claimed
