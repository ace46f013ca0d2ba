-- Releases a lock if, and only if, the caller still owns it, and wakes the waiters.
--
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token
-- ARGV[2]: 1 if the caller's own client is subscribed to the channel (its line keeps the
--          subscription while other local tasks wait their turn), else 0
-- ARGV[3]: 1 on a Redis Cluster, where waiters listen on the sharded channel (SSUBSCRIBE), so
--          the release is an SPUBLISH; else 0
-- returns: 1 released, nobody else waits; 2 released, and other clients wait (subscribed to the
--          channel); 3 released, but waiters could not be told (an ACL user without rights on
--          the channel); 0 already expired (no key); -1 held by another owner (redsync tells
--          the last two apart the same way). One integer: a table reply costs Redis more.

-- The channel is the lock key plus ':released' (see key.rs); built here, not sent.
local channel = KEYS[1] .. ':released'
local sharded = ARGV[3] == '1'
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- Waiters sleep on this channel instead of polling. pcall: the lock is already deleted, and
  -- a user without channel rights must not turn a done release into an error (its waiters
  -- find out by their bounded re-checks).
  local n = redis.pcall(sharded and 'SPUBLISH' or 'PUBLISH', channel, 'released')
  if type(n) ~= 'number' then return 3 end
  if n > tonumber(ARGV[2]) then
    -- PUBLISH also counts pattern subscribers, which are not waiters; when it reached anyone
    -- (rare without contention), count the channel's own subscribers instead.
    local subs = redis.pcall('PUBSUB', sharded and 'SHARDNUMSUB' or 'NUMSUB', channel)
    if type(subs) == 'table' and subs[2] then n = subs[2] end
  end
  if n > tonumber(ARGV[2]) then return 2 end
  return 1
elseif holder then
  return -1
end
return 0
