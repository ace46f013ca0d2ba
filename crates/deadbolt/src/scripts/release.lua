-- Releases a lock if, and only if, the caller still owns it, and wakes the waiters.
--
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token
-- ARGV[2]: the release channel
-- returns: 1 released, 0 already expired (no key), -1 held by another owner
--          (redsync tells the last two apart the same way)

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- Waiters sleep on this channel instead of polling; a lost message only delays them until
  -- the TTL they saw runs out.
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
elseif holder then
  return -1
end
return 0
