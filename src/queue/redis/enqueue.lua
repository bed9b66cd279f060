-- Enqueue one job: check the store is initialised, check the user's pending cap, draw a ticket,
-- queue the job (in the queue and in its model's lane) and publish the change, all in one
-- atomic step so the feed order is the server's order of operations.
-- KEYS: 1 ticket, 2 queue, 3 jobs, 4 pending:<user>, 5 feedseq, 6 users, 7 tombstone, 8 models
-- ARGV: 1 id, 2 user, 3 max_pending, 4 feed channel, 5 model ('' for none), 6 key base,
--   7.. the models whose jobs count ahead of it (none given: every job ahead counts)
-- Lanes: `<base>lane:<model>` (jobs for a model) and `<base>lane` (jobs without one), sorted
-- sets by ticket, under the same hash tag as every other key.
-- Returns {1, ticket, position} | {-1} lost state | {-2} over the cap | {-3} queued already
-- | {-4} aborted (its caller gave up waiting and undid it: see abort.lua).
if redis.call('EXISTS', KEYS[7]) == 1 then
  return {-4}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[3]) then
  return {-2}
end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return {-3}
end
local ticket = redis.call('INCR', KEYS[1])
local model = ARGV[5]
redis.call('ZADD', KEYS[2], ticket, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local token = '-'
if model == '' then
  redis.call('ZADD', ARGV[6] .. 'lane', ticket, ARGV[1])
else
  redis.call('ZADD', ARGV[6] .. 'lane:' .. model, ticket, ARGV[1])
  redis.call('HSET', KEYS[8], ARGV[1], model)
  token = string.gsub(model, '.', function(c) return string.format('%02x', c:byte()) end)
end
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[2])
local position
if #ARGV < 7 then
  position = redis.call('ZRANK', KEYS[2], ARGV[1]) + 1
else
  local below = '(' .. ticket
  position = 1 + redis.call('ZCOUNT', ARGV[6] .. 'lane', '-inf', below)
  for i = 7, #ARGV do
    position = position + redis.call('ZCOUNT', ARGV[6] .. 'lane:' .. ARGV[i], '-inf', below)
  end
end
local seq = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[4],
  string.format('%d A %s %d %s %s', seq, ARGV[1], ticket, token, ARGV[2]))
return {1, ticket, position}
