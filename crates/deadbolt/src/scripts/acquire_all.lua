-- Takes several locks of one node at once, or none of them (a MultiLock's fast path).
--
-- KEYS[i]: the lock keys, in canonical order
-- ARGV[1]: the owner token, the same in every key
-- ARGV[2]: the lease, in milliseconds
-- returns: {1} all taken; {0, i} KEYS[i] is held by another owner (nothing was written);
--          the error "WRONGTYPE <key>" when a key holds something else

-- Every check before any write: a script is not rolled back, so a failure halfway through
-- would leave locks without an owner that knows it holds them.
for i, key in ipairs(KEYS) do
  local ok, holder = pcall(redis.call, 'GET', key)
  if not ok then
    return redis.error_reply('WRONGTYPE ' .. key)
  end
  -- Our own token: a retry after a reply that never came, whose first run took them all.
  if holder and holder ~= ARGV[1] then
    return {0, i}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
end
return {1}
