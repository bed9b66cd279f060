-- Take the first job, forget its owner, record that the queue moved and publish the removal.
-- KEYS: 1 queue, 2 jobs, 3 moved, 4 feedseq
-- ARGV: 1 now (ms since the epoch), 2 feed channel
-- Returns {id, ticket, user} or nil when the queue is empty.
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then
  return false
end
local id = popped[1]
local ticket = tonumber(popped[2])
local user = redis.call('HGET', KEYS[2], id) or ''
redis.call('HDEL', KEYS[2], id)
-- A job left for a backend now: the queue moved (as the in-process queue, this overrides a
-- later time written by mark_moved).
redis.call('SET', KEYS[3], ARGV[1])
local seq = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[2], string.format('%d R %s', seq, id))
return {id, ticket, user}
