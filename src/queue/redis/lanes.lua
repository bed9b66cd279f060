-- Shared by the scripts that add or remove queued jobs (prepended to each, see keys.rs): a
-- job's place in its model's lane. `base` is the key prefix, `models` the hash job → model,
-- `lanes` the set of models with queued jobs. Lanes: `<base>lane:<model>` (jobs for a model)
-- and `<base>lane` (jobs without one), sorted sets by ticket under the same hash tag as every
-- other key.

-- Puts job `id` at `ticket` in the lane of `model` ('' for none); returns the model as the
-- feed carries it (hex, since a name may hold spaces; '-' for none).
local function join_lane(base, models, lanes, id, ticket, model)
  if model == '' then
    redis.call('ZADD', base .. 'lane', ticket, id)
    return '-'
  end
  redis.call('ZADD', base .. 'lane:' .. model, ticket, id)
  redis.call('HSET', models, id, model)
  redis.call('SADD', lanes, model)
  return (string.gsub(model, '.', function(c) return string.format('%02x', c:byte()) end))
end

-- Takes job `id` out of the lane of `model` (false for none), forgetting a lane it empties.
local function leave_lane(base, models, lanes, id, model)
  if not model then
    redis.call('ZREM', base .. 'lane', id)
    return
  end
  local lane = base .. 'lane:' .. model
  redis.call('ZREM', lane, id)
  redis.call('HDEL', models, id)
  if redis.call('ZCARD', lane) == 0 then
    redis.call('SREM', lanes, model)
  end
end

