-- Put a job back with its own ticket unless it is queued already; publish only a real change.
-- KEYS: 1 queue, 2 jobs, 3 feedseq
-- ARGV: 1 id, 2 ticket, 3 user, 4 feed channel
-- Returns 1 if it was added, 0 if it was queued already.
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
if added == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  local seq = redis.call('INCR', KEYS[3])
  redis.call('PUBLISH', ARGV[4],
    string.format('%d A %s %s %s', seq, ARGV[1], ARGV[2], ARGV[3]))
end
return added
