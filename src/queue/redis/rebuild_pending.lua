-- Replace the pending sets of some users with the ids the database counts (KEYS[2..] are
-- their pending keys, in the order of the users in ARGV).
-- KEYS: 1 users, 2.. pending:<user>
-- ARGV: groups of user, n, id1 .. idn
local k = 2
local i = 1
while i <= #ARGV do
  local user = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  redis.call('DEL', KEYS[k])
  for j = 1, n do
    redis.call('SADD', KEYS[k], ARGV[i + 1 + j])
  end
  if n > 0 then
    redis.call('SADD', KEYS[1], user)
  end
  k = k + 1
  i = i + 2 + n
end
return 0
