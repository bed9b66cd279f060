-- One backend's circuit breaker, shared by every process: the same state machine as
-- domain::breaker, on Redis's clock.
-- KEYS: 1 the backend's breaker (a hash: state, failures, until, trial, trial_until)
-- ARGV: 1 op ('readiness' | 'admit' | 'record' | 'hold_off'), 2 holder (of a trial),
--       3 failure threshold, 4 open period (ms), 5 trial lease (ms),
--       6 admission ('allowed' | 'trial'), 7 outcome ('success' | 'failure' | 'neutral'),
--       8 hold-off (ms)
-- Returns {state before, state after, answer, ms, failures}: for 'readiness' the answer is
-- 'closed', 'held_off' (ms left), 'open' (ms left), 'trial_due' or 'trial_running'; for 'admit' it is 'allowed',
-- 'trial' or 'rejected'; for 'record' it is ''. `failures`: consecutive failures counted now.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local key, op, holder = KEYS[1], ARGV[1], ARGV[2]
local threshold, open_for, trial_lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fields = redis.call('HMGET', key, 'state', 'until', 'trial', 'trial_until', 'failures', 'held_until')
local state = fields[1] or 'closed'
local until_ms = tonumber(fields[2] or '0')
local trial = fields[3] or ''
local trial_until = tonumber(fields[4] or '0')
local failures = tonumber(fields[5] or '0')
local held_until = tonumber(fields[6] or '0')
-- A trial whose process never reported (it died) is over after its lease.
local trial_running = trial ~= '' and now < trial_until

local function open()
  redis.call('HSET', key, 'state', 'open', 'until', now + open_for, 'failures', 0, 'trial', '')
  failures = 0
  return 'open'
end

if op == 'hold_off' then
  redis.call('HSET', key, 'held_until', math.max(held_until, now + tonumber(ARGV[8])))
  return {state, state, '', 0, failures}
end

if op == 'readiness' then
  if state == 'closed' and now < held_until then
    return {state, state, 'held_off', held_until - now, failures}
  end
  if state == 'closed' then return {state, state, 'closed', 0, failures} end
  if state == 'open' and now < until_ms then return {state, state, 'open', until_ms - now, failures} end
  if state == 'half_open' and trial_running then return {state, state, 'trial_running', 0, failures} end
  return {state, state, 'trial_due', 0, failures}
end

if op == 'admit' then
  if state == 'closed' then return {state, state, 'allowed', 0, failures} end
  if (state == 'open' and now < until_ms) or (state == 'half_open' and trial_running) then
    return {state, state, 'rejected', 0, failures}
  end
  redis.call('HSET', key, 'state', 'half_open', 'trial', holder, 'trial_until', now + trial_lease)
  return {state, 'half_open', 'trial', 0, failures}
end

-- op == 'record'
local admission, outcome = ARGV[6], ARGV[7]
local after = state
if admission == 'allowed' and state == 'closed' then
  if outcome == 'success' then
    redis.call('HSET', key, 'failures', 0)
    failures = 0
  elseif outcome == 'failure' then
    failures = redis.call('HINCRBY', key, 'failures', 1)
    if failures >= threshold then after = open() end
  end
elseif admission == 'trial' and state == 'half_open' and trial == holder then
  if outcome == 'success' then
    redis.call('HSET', key, 'state', 'closed', 'failures', 0, 'trial', '')
    failures = 0
    after = 'closed'
  elseif outcome == 'failure' then
    after = open()
  else
    redis.call('HSET', key, 'trial', '')
  end
end
return {state, after, '', 0, failures}
