-- Releases a lock if, and only if, the caller still owns it, and wakes the waiters.
--
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token
-- ARGV[2]: the release channel
-- ARGV[3]: 1 if the caller's own client is subscribed to the channel (its line keeps the
--          subscription while other local tasks wait their turn), else 0
-- returns: {1, n} released, with n other clients subscribed to the channel (waiting), or
--          n = -1 when they could not be told (an ACL user without rights on the channel);
--          {0, 0} already expired (no key); {-1, 0} held by another owner
--          (redsync tells the last two apart the same way)

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- Waiters sleep on this channel instead of polling. NUMSUB counts exact subscribers only (no
  -- pattern subscribers), which the caller uses to decide whether other clients wait, and saves
  -- the PUBLISH when nobody does.
  local subs = redis.pcall('PUBSUB', 'NUMSUB', ARGV[2])
  local n = 0
  if type(subs) == 'table' and subs[2] then n = subs[2] - tonumber(ARGV[3]) end
  if n > 0 then
    -- pcall: the lock is already deleted, and a user without channel rights must not turn a
    -- done release into an error. Waiters then find out by their bounded re-checks.
    local published = redis.pcall('PUBLISH', ARGV[2], 'released')
    if type(published) == 'table' then n = -1 end
  end
  return {1, n}
elseif holder then
  return {-1, 0}
end
return {0, 0}
