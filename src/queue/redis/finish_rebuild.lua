-- Make new tickets come after every ticket the database or the queue knows, creating the
-- counter if Redis lost it: its existence is what marks the store as initialised.
-- KEYS: 1 ticket, 2 queue
-- ARGV: 1 lowest allowed value of the counter
-- Returns the number of queued jobs.
local floor = tonumber(ARGV[1])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if #last == 2 and tonumber(last[2]) > floor then
  floor = tonumber(last[2])
end
local current = tonumber(redis.call('GET', KEYS[1]) or '')
if current == nil or floor > current then
  redis.call('SET', KEYS[1], string.format('%d', floor))
end
return redis.call('ZCARD', KEYS[2])
