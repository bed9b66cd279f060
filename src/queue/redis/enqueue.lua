-- Enqueue one job: check the store is initialised, check the user's pending cap, draw a ticket,
-- queue the job (in the queue and in its model's lane) and publish the change, all in one
-- atomic step so the feed order is the server's order of operations.
-- KEYS: 1 ticket, 2 queue, 3 jobs, 4 pending:<user>, 5 feedseq, 6 users, 7 tombstone, 8 models,
--   9 lanes (the models with queued jobs)
-- ARGV: 1 id, 2 user, 3 max_pending, 4 feed channel, 5 model ('' for none), 6 key base,
--   7 the routing (see below), once some backend has listed models (without it: the rank)
-- Lanes: `<base>lane:<model>` (jobs for a model) and `<base>lane` (jobs without one), sorted
-- sets by ticket, under the same hash tag as every other key.
-- Returns {1, ticket, position} | {-1} lost state | {-2} over the cap | {-3} queued already
-- | {-4} aborted (its caller gave up waiting and undid it: see abort.lua).
-- The routing (ARGV spec): one line per listed model, `model<TAB>backends<TAB>partial`, where
-- `backends` has one 0/1 per backend (1: it lists the model) and `partial` is 1 when the
-- model's jobs do not count every job ahead.
local function parse_routing(spec)
  local masks, partial = {}, {}
  for line in string.gmatch(spec, '[^\n]+') do
    local model, bits, part = string.match(line, '^([^\t]+)\t([01]+)\t([01])$')
    if model then
      masks[model] = bits
      partial[model] = part == '1'
    end
  end
  return masks, partial
end

local function share_a_backend(a, b)
  for i = 1, math.min(#a, #b) do
    if string.byte(a, i) == 49 and string.byte(b, i) == 49 then
      return true
    end
  end
  return false
end

-- 1 + the jobs ahead of `id` (at `ticket`) but those whose model no backend lists any more
-- (lanes without a line in the routing: they can take no backend).
local function rank_position(base, active, masks, queue, id, ticket)
  local position = redis.call('ZRANK', queue, id) + 1
  local below = '(' .. ticket
  for _, lane in ipairs(active) do
    if not masks[lane] then
      position = position - redis.call('ZCOUNT', base .. 'lane:' .. lane, '-inf', below)
    end
  end
  return position
end

-- 1 + the jobs ahead of `ticket` that count for a job for `model` (a partial one): those
-- without a model, and those in the lanes (`active`: the models queued now) whose model
-- shares a backend with it.
local function counted_position(base, active, masks, model, ticket)
  local below = '(' .. ticket
  local position = 1 + redis.call('ZCOUNT', base .. 'lane', '-inf', below)
  local own = masks[model]
  for _, lane in ipairs(active) do
    local theirs = masks[lane]
    if theirs and share_a_backend(own, theirs) then
      position = position + redis.call('ZCOUNT', base .. 'lane:' .. lane, '-inf', below)
    end
  end
  return position
end
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
  redis.call('SADD', KEYS[9], model)
  token = string.gsub(model, '.', function(c) return string.format('%02x', c:byte()) end)
end
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
