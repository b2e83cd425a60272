-- Give one request's concurrency slots back. One round trip.
--
-- KEYS[i]  the sorted sets of concurrency_acquire.lua
-- ARGV     token
-- Returns  how many slots the token held.
local released = 0
for _, key in ipairs(KEYS) do
  released = released + redis.call('ZREM', key, ARGV[1])
end
return released
