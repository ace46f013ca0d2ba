-- Releases a lock if, and only if, the caller still owns it, and wakes the waiters if any
-- marked it.
--
-- A waiter that is subscribed to the channel marks the holder's token (`<token>+w`, see
-- wait.lua) in the same atomic step as its try, so a token left unmarked means nobody waits on
-- the channel for this holding: its release is a bare compare-and-delete, without the PUBLISH
-- (and channel name) that would cost every uncontended release. Waiters that are not subscribed
-- (no channel rights) or wait behind a quiet holder (`-q`) do not mark: they re-check on a timer.
-- A mark made after the holder's GET below cannot exist: scripts run atomically.
--
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token (the key holds it, or it plus '+w' once a waiter marked it)
-- ARGV[2]: 1 if the caller's own client is subscribed to the channel (its line keeps the
--          subscription while other local tasks wait their turn), else 0 or absent
-- ARGV[3]: 1 on a Redis Cluster, where waiters listen on the sharded channel (SSUBSCRIBE), so
--          the release is an SPUBLISH; else 0 or absent
-- returns: 1 released, nobody else waits (an unmarked token: nothing is published); 2 released,
--          and other clients wait (subscribed to the channel); 3 released, but waiters could
--          not be told (an ACL user without rights on the channel); 0 already expired (no key);
--          -1 held by another owner (redsync tells the last two apart the same way). One
--          integer: a table reply costs Redis more.

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  -- Unmarked: no subscribed waiter tried while we held it, so nobody is told.
  redis.call('DEL', KEYS[1])
  return 1
elseif holder == ARGV[1] .. '+w' then
  redis.call('DEL', KEYS[1])
  -- The channel is the lock key plus ':released' (see key.rs); built here, not sent.
  local channel = KEYS[1] .. ':released'
  local sharded = ARGV[3] == '1'
  local own = tonumber(ARGV[2] or '0')
  -- Waiters sleep on this channel instead of polling. pcall: the lock is already deleted, and
  -- a user without channel rights must not turn a done release into an error (its waiters
  -- find out by their bounded re-checks).
  local n = redis.pcall(sharded and 'SPUBLISH' or 'PUBLISH', channel, 'released')
  if type(n) ~= 'number' then return 3 end
  if n > own then
    -- PUBLISH also counts pattern subscribers, which are not waiters; when it reached anyone
    -- (rare without contention), count the channel's own subscribers instead.
    local subs = redis.pcall('PUBSUB', sharded and 'SHARDNUMSUB' or 'NUMSUB', channel)
    if type(subs) == 'table' and subs[2] then n = subs[2] end
  end
  if n > own then return 2 end
  return 1
elseif holder then
  return -1
end
return 0
