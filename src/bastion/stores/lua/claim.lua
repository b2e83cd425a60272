-- Take an idempotency key for a lease, or report the record that holds it. One round trip.
--
-- KEYS[1]  the record, a hash: f = fingerprint, t = fencing token, d = deadline (lease end while
--          in flight, expiry once complete; ms on the decision's clock), r = stored response
--          (absent while in flight; any bytes).
-- ARGV     fingerprint, token, lease_ms, now_ms, px (lease_ms plus the store's expiry slack)
-- Returns  {1} when acquired (or already held by this very token: the store sends a claim
--          again when its connection broke, and the first may have run); {0, fingerprint,
--          lease_remaining_ms} while another request holds the lease; {0, fingerprint, 0,
--          response} once a response is stored.
--
-- Deadlines are judged on the decision's clock (_clock.lua: the server's TIME by default); the
-- key's PX, a little longer than the deadline, only lets Redis free what nobody asks again.
local now = clock_ms(ARGV[4])
local record = redis.call('HMGET', KEYS[1], 'f', 'd', 'r', 't')
if record[1] then
  local deadline = tonumber(record[2])
  if deadline > now then
    if record[3] then
      return {0, record[1], 0, record[3]}
    end
    if record[4] == ARGV[2] then
      return {1}
    end
    return {0, record[1], deadline - now}
  end
end
-- free: no record, or its lease or its stored response ran out
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'f', ARGV[1], 't', ARGV[2],
  'd', string.format('%d', now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1}
