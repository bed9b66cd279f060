-- Take one of a backend's slots for a holder, or keep the one it has, for a lease.
-- KEYS: 1 the backend's slots (a sorted set: holder -> when its lease ends, ms on Redis's clock)
-- ARGV: 1 holder, 2 slots, 3 lease (ms)
-- Returns 1 if the holder has a slot now, 0 if every slot is held by others.
-- Redis's own clock: the processes sharing a backend may not agree on the time.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local holds = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not holds and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
local ends = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], ends, ARGV[1])
-- The key goes when its last lease ends (a backend no process lists any more leaves nothing).
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.max(ends, tonumber(last[2])))
return 1
