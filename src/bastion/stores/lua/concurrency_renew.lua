-- Extend one request's live concurrency leases. One round trip.
--
-- KEYS[i]  the sorted sets of concurrency_acquire.lua
-- ARGV     token, lease_ms, now_ms, expiry slack ms
-- Returns  1 when the token still held a live lease on every key, 0 otherwise.
local token = ARGV[1]
local now = clock_ms(ARGV[3])
local deadline = now + tonumber(ARGV[2])
local held = 1
for _, key in ipairs(KEYS) do
  local score = redis.call('ZSCORE', key, token)
  if score and tonumber(score) > now then
    redis.call('ZADD', key, 'XX', deadline, token)
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', key, string.format('%d', tonumber(last[2]) - now + tonumber(ARGV[4])))
  else
    held = 0
  end
end
return held
