-- Prepended to every script. The clock a decision is made on: the caller's now_ms when the
-- store was given a clock (tests inject one), or, when that argument is empty, this server's
-- own TIME, so every process deciding a key reads one clock whatever its host's says.
local function clock_ms(arg)
  if arg ~= '' then
    return tonumber(arg)
  end
  if redis.replicate_commands then
    -- Redis 5 and 6 replicate a script verbatim unless told to replicate its effects, and
    -- refuse a write after TIME; Redis 7 always replicates effects
    redis.replicate_commands()
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

