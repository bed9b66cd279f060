-- Put back the jobs of one rebuild chunk the queue lacks (ZADD NX: never twice, also with
-- concurrent rebuilds), in the given (ticket) order, publishing each addition.
-- KEYS: 1 queue, 2 jobs, 3 feedseq
-- ARGV: 1 feed channel, then triples id, ticket, user
-- Returns the number of jobs added.
local added = 0
for i = 2, #ARGV, 3 do
  local id, ticket, user = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('ZADD', KEYS[1], 'NX', ticket, id) == 1 then
    redis.call('HSET', KEYS[2], id, user)
    local seq = redis.call('INCR', KEYS[3])
    redis.call('PUBLISH', ARGV[1], string.format('%d A %s %s %s', seq, id, ticket, user))
    added = added + 1
  end
end
return added
