-- Extend an in-flight lease, fenced by its token. One round trip.
--
-- KEYS[1]  the record (see claim.lua)
-- ARGV     token, lease_ms, now_ms, px (lease_ms plus the store's expiry slack)
-- Returns  1 when the token still held a live lease, 0 otherwise.
local now = clock_ms(ARGV[3])
local record = redis.call('HMGET', KEYS[1], 't', 'd', 'r')
if record[1] ~= ARGV[1] or record[3] or tonumber(record[2]) <= now then
  return 0
end
-- never shorten: a caller whose clock is behind must not bring the deadline forward
local deadline = math.max(tonumber(record[2]), now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'd', string.format('%d', deadline))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
