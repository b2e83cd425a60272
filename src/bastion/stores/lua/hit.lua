-- Decide every rate-limit tier of one request at once, all-or-nothing. One round trip.
--
-- A line-by-line port of bastion/_core/algorithms.py; the conformance and equivalence
-- tests hold it to the same answers. Lua numbers are doubles, exact for integers below 2^53:
-- the store refuses tiers whose (limit + cost) * window_ms exceeds 2^50, which keeps every
-- intermediate value below 2^52, and idiv() corrects the rounding of the float division.
--
-- KEYS[i]  bucket i, a string "a b c" holding the algorithm's three-integer state
-- ARGV     now_ms (empty: the server's TIME, see _clock.lua), expiry slack ms, then four values per bucket: algorithm (f = fixed_window,
--          s = sliding_window, g = gcra), limit, window_ms, cost
-- Returns  four integers per bucket: allowed (1/0), remaining, reset_ms, retry_after_ms.
-- Buckets are written (SET ... PX, the TTL set with the value) only when every tier allows;
-- the TTL outlives the state by the slack, so a process given a clock (clock=) that lags a
-- little behind still finds it, and then decides as of the bucket's own time (see as_of).

local function idiv(a, b) -- floor(a / b), exact for |a|, b < 2^52
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function ceil_div(a, b)
  return -idiv(-a, b)
end

local MAX_CLOCK_LEAD_MS = 60000 -- bastion._core.algorithms.MAX_CLOCK_LEAD_MS

-- a caller whose clock is behind the bucket's own time (state[at]) decides as of the latter;
-- a bucket time more than MAX_CLOCK_LEAD_MS ahead is a broken clock's and is ignored
local function as_of(state, now, at)
  if not state or state[at] <= now then
    return state, now
  end
  if state[at] - now > MAX_CLOCK_LEAD_MS then
    return nil, now
  end
  return state, state[at]
end

local function fixed_window(limit, window, cost, state, now)
  state, now = as_of(state, now, 1)
  local start = idiv(now, window) * window
  local count = 0
  if state and state[1] == start then
    count = state[2]
  end
  local allowed = count + cost <= limit
  if allowed then
    count = count + cost
  end
  local window_end = start + window - now
  local retry = 0
  if not allowed then
    retry = window_end
  end
  local reset = 0
  if count ~= 0 then
    reset = window_end
  end
  return allowed, math.max(0, limit - count), reset, retry, {start, count, 0}, start + window
end

local function sliding_retry_after(limit, window, cost, current, previous, elapsed)
  local left = window - elapsed
  local spare = limit - current - cost
  if spare >= 0 and previous > 0 then
    local earliest = window - idiv(spare * window, previous)
    return math.max(1, earliest - elapsed)
  end
  if limit < cost then
    return left + window
  end
  if current == 0 then
    return left
  end
  return left + math.max(0, window - idiv((limit - cost) * window, current))
end

local function sliding_window(limit, window, cost, state, now)
  state, now = as_of(state, now, 1)
  local start = idiv(now, window) * window
  local current, previous = 0, 0
  if state then
    if state[1] == start then
      current, previous = state[2], state[3]
    elseif state[1] == start - window then
      previous = state[2]
    end
  end
  local elapsed = now - start
  local left = window - elapsed
  local allowed = previous * left + (current + cost) * window <= limit * window
  local retry = 0
  if allowed then
    current = current + cost
  else
    retry = sliding_retry_after(limit, window, cost, current, previous, elapsed)
  end
  local used = previous * left + current * window
  local remaining = math.max(0, idiv(limit * window - used, window))
  -- more quota is back once one more unit than `remaining` would fit
  local reset = 0
  if remaining < limit then
    reset = sliding_retry_after(limit, window, remaining + 1, current, previous, elapsed)
  end
  return allowed, remaining, reset, retry, {start, current, previous}, start + 2 * window
end

local function gcra(limit, window, cost, state, now)
  state, now = as_of(state, now, 3)
  -- times in 1/limit ms, so one token's emission interval is exactly `window`
  local backlog = 0
  if state then
    backlog = math.max(0, (state[1] - now) * limit + state[2])
  end
  local capacity = window * limit
  local wanted = backlog + cost * window
  local allowed = wanted <= capacity
  local retry = 0
  if allowed then
    backlog = wanted
  else
    retry = ceil_div(wanted - capacity, limit)
  end
  local remaining = math.max(0, idiv(capacity - backlog, window))
  -- the next token is back when the backlog has drained to fit one more than `remaining`
  local reset = 0
  if backlog > 0 then
    reset = ceil_div(backlog + (remaining + 1) * window - capacity, limit)
  end
  local tat = now + idiv(backlog, limit)
  local state_out = {tat, backlog - idiv(backlog, limit) * limit, now}
  return allowed, remaining, reset, retry, state_out, tat + 1
end

local ALGORITHMS = {f = fixed_window, s = sliding_window, g = gcra}

local now = clock_ms(ARGV[1])
local slack = tonumber(ARGV[2])
local reply, states, expiries = {}, {}, {}
local all_allowed = true
for i, key in ipairs(KEYS) do
  local base = 3 + (i - 1) * 4
  local raw = redis.call('GET', key)
  local state = nil
  if raw then
    local a, b, c = string.match(raw, '^(%-?%d+) (%-?%d+) (%-?%d+)$')
    if a then
      state = {tonumber(a), tonumber(b), tonumber(c)}
    end
  end
  local decide = ALGORITHMS[ARGV[base]]
  local allowed, remaining, reset, retry, new_state, expires = decide(
    tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), state, now)
  if allowed then
    reply[#reply + 1] = 1
  else
    reply[#reply + 1] = 0
    all_allowed = false
  end
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = retry
  states[i] = string.format('%d %d %d', new_state[1], new_state[2], new_state[3])
  expiries[i] = expires - now + slack
end
if all_allowed then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, states[i], 'PX', string.format('%d', expiries[i]))
  end
end
return reply
