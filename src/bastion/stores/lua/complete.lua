-- Store the response of an in-flight record, fenced by its token. One round trip.
--
-- KEYS[1]  the record (see claim.lua)
-- ARGV     token, ttl_ms, now_ms, px (ttl_ms plus the store's expiry slack), response (bytes)
-- Returns  1 when stored, or when this very response is already stored, live, by this token
--          (the store sends it again when its connection broke, and the first may have
--          run); 0 when the token no longer holds a live lease.
local now = clock_ms(ARGV[3])
local record = redis.call('HMGET', KEYS[1], 't', 'd', 'r')
if record[1] == ARGV[1] and record[3] == ARGV[5] and tonumber(record[2]) > now then
  return 1
end
if record[1] ~= ARGV[1] or record[3] or tonumber(record[2]) <= now then
  return 0
end
redis.call('HSET', KEYS[1], 'r', ARGV[5], 'd', string.format('%d', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
