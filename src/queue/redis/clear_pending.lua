-- Drop the pending sets of users the database says have nothing pending.
-- KEYS: 1 users, 2.. pending:<user>
-- ARGV: the users, in the order of their keys
for i = 1, #ARGV do
  redis.call('DEL', KEYS[i + 1])
  redis.call('SREM', KEYS[1], ARGV[i])
end
return 0
