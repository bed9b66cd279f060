-- Undo an enqueue whose outcome is unknown (its reply timed out): leave a tombstone so that
-- the enqueue, if it reaches Redis later, is refused; if it landed already, take the job out
-- of the queue and its model's lane (publishing the removal) and out of its owner's pending
-- cap.
-- KEYS: 1 tombstone, 2 queue, 3 jobs, 4 pending:<user>, 5 users, 6 feedseq, 7 models, 8 lanes
-- ARGV: 1 id, 2 user, 3 feed channel, 4 tombstone lifetime (s), 5 key base
-- Returns 1 if the job had landed, 0 otherwise.
redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[4]))
local removed = redis.call('ZREM', KEYS[2], ARGV[1])
if removed == 1 then
  leave_lane(ARGV[5], KEYS[7], KEYS[8], ARGV[1], redis.call('HGET', KEYS[7], ARGV[1]))
  redis.call('HDEL', KEYS[3], ARGV[1])
  local seq = redis.call('INCR', KEYS[6])
  redis.call('PUBLISH', ARGV[3], string.format('%d R %s', seq, ARGV[1]))
end
redis.call('SREM', KEYS[4], ARGV[1])
if redis.call('SCARD', KEYS[4]) == 0 then
  redis.call('SREM', KEYS[5], ARGV[2])
end
return removed
