-- One attempt of a waiter whose client is subscribed to the lock's release channel: takes the
-- lock like a plain `SET key token NX PX lease`, and when it is held by a deadbolt client, marks
-- the holder's token so that its release publishes (see release.lua: a release publishes only
-- when someone marked the token, which keeps an uncontended release as cheap as a bare
-- compare-and-delete).
--
-- The caller subscribes before it sends this, so the message of a release that follows the
-- mark reaches it. Scripts are atomic: a mark cannot land between a release's GET and DEL. The
-- mark lives as long as the holding: renewals (PEXPIRE) and this KEEPTTL keep the value, and
-- nothing else rewrites it. What still goes unpublished: a holder that lost its channel rights
-- after it connected (its PUBLISH is refused, release.lua's 3), and a holding that expires
-- instead of being released; a waiter then wakes when the key's TTL runs out (returned here),
-- so a missed message costs latency, never exclusion.
--
-- KEYS[1]: the lock key
-- ARGV[1]: the owner token (`dbt2-<32 hex>-<lease ms>[-q]`)
-- ARGV[2]: the lease, in milliseconds
-- returns: nil when the lock is ours (taken now, or by an earlier try with this token whose
--          reply was lost);
--          {holder, pttl} when another owner holds it: the value as stored (a deadbolt token,
--          marked or not, or a peer's) and the key's remaining TTL (-1: no expiry), which
--          bounds how long a waiter sleeps if no release message comes (a crashed holder);
--          the error "WRONGTYPE <key>" when the key holds something else

if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return nil
end
local ok, holder = pcall(redis.call, 'GET', KEYS[1])
if not ok then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1])
end
if holder == ARGV[1] or holder == ARGV[1] .. '+w' then
  return nil
end
if string.sub(holder, 1, 5) ~= 'dbt2-' then
  return {holder, redis.call('PTTL', KEYS[1])}
end
-- Only an unmarked token of a holder that may publish: a quiet one (`-q`) could not, so its
-- waiters re-check it on a timer. The pattern is the whole token, so no other value is touched.
local random = string.match(holder, '^dbt2%-(%x+)%-%d+$')
if random and #random == 32 then
  redis.call('SET', KEYS[1], holder .. '+w', 'KEEPTTL')
end
return {holder, redis.call('PTTL', KEYS[1])}
