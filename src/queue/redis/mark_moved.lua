-- Record when the queue last moved, keeping the latest time ever written.
-- KEYS: 1 moved
-- ARGV: 1 time (ms since the epoch)
local now = tonumber(ARGV[1])
local moved = tonumber(redis.call('GET', KEYS[1]) or '')
if moved == nil or now > moved then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
