-- Shared by the scripts that count positions (prepended to each, see keys.rs).
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
