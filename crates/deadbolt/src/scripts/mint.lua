-- Mints the fencing token of a lock already held, on its first use: an owner-checked step, so
-- tokens are ordered like the holdings that minted them (a holding can only mint while it is
-- the holder, and holdings on one server do not overlap).
--
-- KEYS[1]: the lock key (holds the owner token)
-- KEYS[2]: the fencing counter key (same hash slot as KEYS[1])
-- ARGV[1]: the owner token (the key holds it, or it plus '+w' once a waiter marked it, see
--          wait.lua)
-- ARGV[2]: how long the fencing counter outlives its last use, in milliseconds
-- returns: {1, fence} minted; {0} the lock is gone; {-1} another owner holds it;
--          the error "WRONGTYPE <key>" when the counter holds something else

local ok, holder = pcall(redis.call, 'GET', KEYS[1])
if not ok then
  return {-1}
end
if holder ~= ARGV[1] and holder ~= ARGV[1] .. '+w' then
  return {holder and -1 or 0}
end

local ok2, last = pcall(redis.call, 'GET', KEYS[2])
if not ok2 or (last and not tonumber(last)) then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2])
end

-- max(last + 1, server time in µs), as in acquire.lua.
local now = redis.call('TIME')
local fence = tonumber(now[1]) * 1000000 + tonumber(now[2])
if last and tonumber(last) >= fence then
  fence = tonumber(last) + 1
end
redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', ARGV[2])
return {1, fence}
