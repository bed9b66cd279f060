-- Take the first job the calling backend may run (any job without a model, or one for a model
-- it offers), forget it, record that the queue moved and publish the removal.
-- KEYS: 1 queue, 2 jobs, 3 moved, 4 feedseq, 5 models, 6 lanes (the models with queued jobs)
-- ARGV: 1 now (ms since the epoch), 2 feed channel, 3 key base, 4.. the models it offers
-- Returns {id, ticket, user[, model]} or nil when it may run no queued job.
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #head == 0 then
  return false
end
local offered = {}
for i = 4, #ARGV do
  offered[ARGV[i]] = true
end
local id, ticket = head[1], tonumber(head[2])
local model = redis.call('HGET', KEYS[5], id)
if model and not offered[model] then
  -- The head is not its to run: the first of each lane it may run, the lowest ticket wins.
  id = nil
  local function consider(lane)
    local first = redis.call('ZRANGE', lane, 0, 0, 'WITHSCORES')
    if #first > 0 and (id == nil or tonumber(first[2]) < ticket) then
      id, ticket = first[1], tonumber(first[2])
    end
  end
  consider(ARGV[3] .. 'lane')
  for i = 4, #ARGV do
    consider(ARGV[3] .. 'lane:' .. ARGV[i])
  end
  if id == nil then
    return false
  end
  model = redis.call('HGET', KEYS[5], id)
end
redis.call('ZREM', KEYS[1], id)
leave_lane(ARGV[3], KEYS[5], KEYS[6], id, model)
local user = redis.call('HGET', KEYS[2], id) or ''
redis.call('HDEL', KEYS[2], id)
-- A job left for a backend now: the queue moved (as the in-process queue, this overrides a
-- later time written by mark_moved).
redis.call('SET', KEYS[3], ARGV[1])
local seq = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[2], string.format('%d R %s', seq, id))
return {id, ticket, user, model}
