-- Releases a lock if, and only if, the caller still owns it, and wakes the waiters.
--
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token
-- ARGV[2]: the release channel
-- returns: {1, n} released, and the release woke waiters in n clients;
--          {0, 0} already expired (no key); {-1, 0} held by another owner
--          (redsync tells the last two apart the same way)

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- Waiters sleep on this channel instead of polling; a lost message only delays them until
  -- the TTL they saw runs out.
  local woken = redis.call('PUBLISH', ARGV[2], 'released')
  return {1, woken}
elseif holder then
  return {-1, 0}
end
return {0, 0}
