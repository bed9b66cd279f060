-- The positions of several jobs once backends have listed models: for each job, 1 + the jobs
-- ahead of it that count (see domain/routing.rs); a job whose model's jobs count every job
-- ahead (or without a model) gets its rank less the jobs ahead whose model nobody lists.
-- KEYS: 1 queue, 2 models, 3 lanes (the models with queued jobs)
-- ARGV: 1 key base, 2 the routing (below), 3.. job ids
-- Returns one position (or nil, not queued) per id. (Prepended: routing.lua.)
local masks, partial = parse_routing(ARGV[2])
local active = redis.call('SMEMBERS', KEYS[3])
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local ticket = redis.call('ZSCORE', KEYS[1], id)
  if not ticket then
    out[#out + 1] = false
  else
    local model = redis.call('HGET', KEYS[2], id)
    if model and partial[model] then
      out[#out + 1] = counted_position(ARGV[1], active, masks, model, ticket)
    else
      out[#out + 1] = rank_position(ARGV[1], active, masks, KEYS[1], id, ticket)
    end
  end
end
return out
