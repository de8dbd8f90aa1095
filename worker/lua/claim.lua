-- Claim queued arq jobs for one worker in one call, as arq's `Worker.start_jobs` claims one
-- job per WATCH/EXISTS/ZSCORE/MULTI round: a job is claimed when no worker runs it (no
-- in-progress key) and it is due on the queue; claiming sets its in-progress key.
-- KEYS: arq queue
-- ARGV: now (ms), in-progress lifetime (ms), arq in-progress key prefix, most jobs to claim,
--       then the job ids read from the queue, in its order
-- Returns {job id, score, job id, score, ...} of the jobs claimed, in the queue's order.
local now, lifetime, prefix, most = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local claimed = {}
for i = 5, #ARGV do
  if #claimed >= 2 * most then break end
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  -- Gone from the queue (finished), deferred by another worker, or running elsewhere.
  if score and tonumber(score) <= now and redis.call('EXISTS', prefix .. id) == 0 then
    redis.call('PSETEX', prefix .. id, lifetime, '1')
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = score
  end
end
return claimed
