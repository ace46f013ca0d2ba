-- One node's part in minting the fencing token of a quorum (Redlock) lock, in two calls: first
-- every node proposes a token, then the largest proposal of a majority is written back to every
-- node (see `engine::mint`). Owner-checked both times, as mint.lua is.
--
-- KEYS[1]: the lock key (holds the owner token)
-- KEYS[2]: the fencing counter key (same hash slot as KEYS[1])
-- ARGV[1]: the owner token (the key holds it, or it plus '+w' once a waiter marked it)
-- ARGV[2]: how long the fencing counter outlives its last use, in milliseconds
-- ARGV[3]: 0 to propose; else the token to write (the counter becomes the larger of the two)
-- returns: {1, token} proposed or written; {0} the lock is gone; {-1} another owner holds it;
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

local token = tonumber(ARGV[3])
if token == 0 then
  -- max(last + 1, server time in µs), as mint.lua computes it.
  local now = redis.call('TIME')
  local proposal = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if last and tonumber(last) >= proposal then
    proposal = tonumber(last) + 1
  end
  return {1, proposal}
end
-- Never lower a counter: a node ahead of this majority keeps its value.
if not last or tonumber(last) < token then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {1, token}
