-- Claim an idempotency key and, only when it was taken, decide the request's rate-limit tiers:
-- claim.lua then hit.lua as one atomic step, one round trip. The store loads this file after
-- claim.lua and hit.lua, each wrapped as a function of its own KEYS and ARGV (run_claim,
-- run_hit), so the two decisions are exactly those of the scripts run one after the other.
--
-- KEYS     the record (claim.lua's KEYS[1]), then the buckets (hit.lua's KEYS)
-- ARGV     claim.lua's five arguments, then hit.lua's
-- Returns  {claim.lua's reply, hit.lua's reply}; the second is empty when the claim was not
--          taken (nothing was charged). A denied hit leaves the claim taken; the caller
--          releases it. A decision that fails undoes the claim and fails the call.
local claimed = run_claim({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]})
if claimed[1] ~= 1 then
  return {claimed, {}}
end
local buckets = {}
for i = 2, #KEYS do
  buckets[i - 1] = KEYS[i]
end
local args = {}
for i = 6, #ARGV do
  args[i - 5] = ARGV[i]
end
-- a script that fails keeps what it wrote: a decision that cannot be made (a bucket key
-- holding another type) must not leave the claim behind, held by a request told it failed
local decided, charged = pcall(run_hit, buckets, args)
if not decided then
  redis.call('DEL', KEYS[1])
  return redis.error_reply(type(charged) == 'table' and charged.err or tostring(charged))
end
return {claimed, charged}
