-- Delete an in-flight record so a retry runs again, fenced by its token. One round trip.
--
-- KEYS[1]  the record (see claim.lua)
-- ARGV     token, now_ms
-- Returns  1 when deleted, 0 when the token no longer holds a live lease.
local now = clock_ms(ARGV[2])
local record = redis.call('HMGET', KEYS[1], 't', 'd', 'r')
if record[1] ~= ARGV[1] or record[3] or tonumber(record[2]) <= now then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
