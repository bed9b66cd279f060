-- The positions of several jobs where backends offer different models: for each job, 1 + the
-- jobs ahead of it that count (those without a model, and those for the models its routing
-- lists); a job whose model is not listed counts every job ahead (its rank).
-- KEYS: 1 queue, 2 models
-- ARGV: 1 key base, 2 routing: lines `model<TAB>counted<TAB>counted…` joined by newlines,
--   3.. job ids
-- Returns one position (or nil, not queued) per id.
local counted = {}
for line in string.gmatch(ARGV[2], '[^\n]+') do
  local fields = {}
  for field in string.gmatch(line, '[^\t]+') do
    fields[#fields + 1] = field
  end
  counted[fields[1]] = fields
end
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local ticket = redis.call('ZSCORE', KEYS[1], id)
  if not ticket then
    out[#out + 1] = false
  else
    local model = redis.call('HGET', KEYS[2], id)
    local lanes = model and counted[model]
    if not lanes then
      out[#out + 1] = redis.call('ZRANK', KEYS[1], id) + 1
    else
      local below = '(' .. ticket
      local position = 1 + redis.call('ZCOUNT', ARGV[1] .. 'lane', '-inf', below)
      for j = 2, #lanes do
        position = position + redis.call('ZCOUNT', ARGV[1] .. 'lane:' .. lanes[j], '-inf', below)
      end
      out[#out + 1] = position
    end
  end
end
return out
