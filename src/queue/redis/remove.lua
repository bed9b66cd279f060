-- Remove a queued job (from the queue and its model's lane) and publish the removal if it was
-- there.
-- KEYS: 1 queue, 2 jobs, 3 feedseq, 4 models, 5 lanes (the models with queued jobs)
-- ARGV: 1 id, 2 feed channel, 3 key base
-- Returns 1 if it was queued, 0 otherwise.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  leave_lane(ARGV[3], KEYS[4], KEYS[5], ARGV[1], redis.call('HGET', KEYS[4], ARGV[1]))
  redis.call('HDEL', KEYS[2], ARGV[1])
  local seq = redis.call('INCR', KEYS[3])
  redis.call('PUBLISH', ARGV[2], string.format('%d R %s', seq, ARGV[1]))
end
return removed
