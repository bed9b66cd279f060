-- One page of the queue in ticket order with the owners and models, read atomically so each
-- page is consistent even while the queue changes.
-- KEYS: 1 queue, 2 jobs, 3 models
-- ARGV: 1 exclusive lower ticket bound, 2 page size
-- Returns {id1, ticket1, user1, model1 ('' for none), id2, ...}.
local page = redis.call('ZRANGE', KEYS[1], '(' .. ARGV[1], '+inf', 'BYSCORE',
  'LIMIT', 0, tonumber(ARGV[2]), 'WITHSCORES')
local out = {}
if #page == 0 then
  return out
end
local ids = {}
for i = 1, #page, 2 do
  ids[#ids + 1] = page[i]
end
local users = redis.call('HMGET', KEYS[2], unpack(ids))
local models = redis.call('HMGET', KEYS[3], unpack(ids))
for i = 1, #ids do
  out[#out + 1] = ids[i]
  out[#out + 1] = tonumber(page[2 * i])
  out[#out + 1] = users[i] or ''
  out[#out + 1] = models[i] or ''
end
return out
