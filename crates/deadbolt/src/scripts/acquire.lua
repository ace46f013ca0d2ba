-- Takes a lock and mints its fencing token in one atomic step (a fenced acquisition; a plain
-- one is a single `SET key token NX PX lease GET`).
--
-- KEYS[1]: the lock key (holds the owner token)
-- KEYS[2]: the fencing counter key (same hash slot as KEYS[1])
-- ARGV[1]: the owner token, unique per acquisition
-- ARGV[2]: the lease, in milliseconds
-- ARGV[3]: how long the fencing counter outlives its last use, in milliseconds
-- ARGV[4]: 1 when the caller is a waiter subscribed to the lock's channel: a deadbolt holder's
--          token is then marked for its release to publish, as wait.lua does; else 0
-- returns: {1, fence} when the lock is ours;
--          {0, pttl, holder} when another owner holds it (pttl is -1 when that owner's key has
--          no expiry, as a peer without TTL leaves it; holder as it was before any mark);
--          the error "WRONGTYPE <key>" when a key holds something else

-- Reads that can fail come before any write: a script is not rolled back, and a lock taken by a
-- script that then failed would have no owner to release it.
local function get(key)
  local ok, value = pcall(redis.call, 'GET', key)
  if not ok then
    return redis.error_reply('WRONGTYPE ' .. key)
  end
  return value
end

local last = get(KEYS[2])
if type(last) == 'table' then return last end
if last and not tonumber(last) then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2])
end

if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local holder = get(KEYS[1])
  if type(holder) == 'table' then return holder end
  if holder ~= ARGV[1] and holder ~= ARGV[1] .. '+w' then
    -- Only an unmarked deadbolt token of a holder that may publish (not quiet, `-q`); the
    -- pattern is the whole token, so no peer's value is touched. See wait.lua.
    local random = ARGV[4] == '1' and string.match(holder, '^dbt2%-(%x+)%-%d+$')
    if random and #random == 32 then
      redis.call('SET', KEYS[1], holder .. '+w', 'KEEPTTL')
    end
    return {0, redis.call('PTTL', KEYS[1]), holder}
  end
  -- A retry after an ambiguous outcome (a timeout): the first attempt landed (and a waiter
  -- may have marked it since). Nobody else can have minted a token since, so the counter still
  -- holds ours.
  if last then
    return {1, tonumber(last)}
  end
end

-- The fencing token is max(last + 1, server time in microseconds). The counter alone would go
-- back to 1 when it expires or a failover loses it; the time floor keeps tokens increasing then,
-- as long as the server clock does not step back further than the tokens ran ahead of it.
-- Microseconds since 1970 stay below 2^53, so Lua's doubles hold them exactly.
local now = redis.call('TIME')
local fence = tonumber(now[1]) * 1000000 + tonumber(now[2])
if last and tonumber(last) >= fence then
  fence = tonumber(last) + 1
end
-- '%d' writes all digits; tostring() would round to 14 significant digits.
redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', ARGV[3])
return {1, fence}
