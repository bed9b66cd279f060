-- Put back the jobs of one rebuild chunk the queue lacks (ZADD NX: never twice, also with
-- concurrent rebuilds), in the given (ticket) order, each in its model's lane, publishing each
-- addition.
-- KEYS: 1 queue, 2 jobs, 3 feedseq, 4 models, 5 lanes (the models with queued jobs)
-- ARGV: 1 feed channel, 2 key base, then quadruples id, ticket, user, model ('' for none)
-- Returns the number of jobs added.
local added = 0
for i = 3, #ARGV, 4 do
  local id, ticket, user, model = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('ZADD', KEYS[1], 'NX', ticket, id) == 1 then
    redis.call('HSET', KEYS[2], id, user)
    local token = join_lane(ARGV[2], KEYS[4], KEYS[5], id, ticket, model)
    local seq = redis.call('INCR', KEYS[3])
    redis.call('PUBLISH', ARGV[1], string.format('%d A %s %s %s %s', seq, id, ticket, token, user))
    added = added + 1
  end
end
return added
