-- Enqueue one job: check the store is initialised, check the user's pending cap, draw a ticket,
-- queue the job (in the queue and in its model's lane) and publish the change, all in one
-- atomic step so the feed order is the server's order of operations.
-- KEYS: 1 ticket, 2 queue, 3 jobs, 4 pending:<user>, 5 feedseq, 6 users, 7 tombstone, 8 models,
--   9 lanes (the models with queued jobs)
-- ARGV: 1 id, 2 user, 3 max_pending, 4 feed channel, 5 model ('' for none), 6 key base,
--   7 the routing (see below), once some backend has listed models (without it: the rank)
-- (Prepended: lanes.lua and routing.lua.)
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
local token = join_lane(ARGV[6], KEYS[8], KEYS[9], ARGV[1], ticket, model)
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[2])
local position
if ARGV[7] then
  local masks, partial = parse_routing(ARGV[7])
  local active = redis.call('SMEMBERS', KEYS[9])
  if model ~= '' and partial[model] then
    position = counted_position(ARGV[6], active, masks, model, ticket)
  else
    position = rank_position(ARGV[6], active, masks, KEYS[2], ARGV[1], ticket)
  end
else
  position = redis.call('ZRANK', KEYS[2], ARGV[1]) + 1
end
local seq = redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[4],
  string.format('%d A %s %d %s %s', seq, ARGV[1], ticket, token, ARGV[2]))
return {1, ticket, position}
