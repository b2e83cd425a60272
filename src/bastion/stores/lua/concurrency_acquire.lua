-- Take a concurrency slot of every key for one request, all or none. One round trip.
--
-- KEYS[i]  a sorted set of the key's holders: member = token, score = lease deadline (ms)
-- ARGV     token, lease_ms, now_ms, expiry slack ms, then one limit per key
-- Returns  1 when every slot was taken, else 0, then the live holders of each key.
-- Leases whose deadline has passed are dropped first: their holders are presumed dead.
local token = ARGV[1]
local now = clock_ms(ARGV[3])
local deadline = now + tonumber(ARGV[2])
local counts = {}
local acquired = 1
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count = redis.call('ZCARD', key)
  if not redis.call('ZSCORE', key, token) and count >= tonumber(ARGV[4 + i]) then
    acquired = 0
  end
  counts[i] = count
end
local reply = {acquired}
for i, key in ipairs(KEYS) do
  if acquired == 1 then
    if redis.call('ZADD', key, deadline, token) == 1 then
      counts[i] = counts[i] + 1
    end
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', key, string.format('%d', tonumber(last[2]) - now + tonumber(ARGV[4])))
  end
  reply[i + 1] = counts[i]
end
return reply
