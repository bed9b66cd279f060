-- Free a job's slot in its owner's pending cap; forget the user once nothing of theirs is
-- pending (atomic with enqueue's SADD, so the user index never misses a pending set).
-- KEYS: 1 pending:<user>, 2 users
-- ARGV: 1 id, 2 user
redis.call('SREM', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0
