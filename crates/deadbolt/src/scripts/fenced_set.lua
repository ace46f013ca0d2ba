-- The resource side of fencing: writes a value only if the writer's fencing token is not older
-- than the newest token that has written before.
--
-- KEYS[1]: the protected key, a hash with fields `value` and `fence`
-- ARGV[1]: the writer's fencing token (decimal u64)
-- ARGV[2]: the value to write
-- returns: 1 written, 0 refused because a newer token has written

local last = redis.call('HGET', KEYS[1], 'fence')
if last then
  -- Compare as decimal strings (length first) so any u64 compares exactly, beyond 2^53.
  local token = ARGV[1]
  if #token < #last or (#token == #last and token < last) then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'fence', ARGV[1])
return 1
