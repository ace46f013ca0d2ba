-- Renews the leases of many locks in one round trip (the watchdog's batch), or only checks them.
--
-- KEYS[i]: a lock key
-- ARGV[2i-1]: the owner token of KEYS[i] (the key holds it, or it plus '+w' once a waiter
--             marked it, see wait.lua; PEXPIRE keeps the value, and so the mark)
-- ARGV[2i]: the new lease of KEYS[i], in milliseconds; 0 to check ownership without renewing
--           (a fixed lease, checked after a reconnect)
-- returns: one integer per key: 1 renewed (or still ours), 0 gone, -1 held by another owner

local out = {}
for i, key in ipairs(KEYS) do
  -- pcall: a key someone replaced with a hash must not fail the renewal of every other lock.
  local holder = redis.pcall('GET', key)
  local token = ARGV[2 * i - 1]
  if holder == token or holder == token .. '+w' then
    if ARGV[2 * i] ~= '0' then
      redis.call('PEXPIRE', key, ARGV[2 * i])
    end
    out[i] = 1
  elseif holder then
    out[i] = -1
  else
    out[i] = 0
  end
end
return out
