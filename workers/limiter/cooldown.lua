--[[
cooldown.lua: make every acquire of a pool wait until a deadline (after a 429). A later deadline
replaces an earlier one, never the reverse, so a short per-minute cooldown cannot cut short a park
until the daily reset. Returns the effective deadline.

KEYS:
  KEYS[1] cooldown  HASH  until (µs) reason
ARGV:
  ARGV[1]     now in µs, or "" to use Redis TIME (injected clock for tests only)
  ARGV[2]     reason to record (e.g. "429", "daily quota")
  ARGV[3]     mode: "for" = wait ARGV[4] µs from now; "next" = until the first of ARGV[4..] after now
  ARGV[4..]   a duration (µs) for "for"; ascending candidate deadlines (µs) for "next"
Returns the effective deadline in µs (string).
]]

local function fmt(x)
  return string.format('%.0f', x)
end

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local deadline = now
if ARGV[3] == 'for' then
  deadline = now + tonumber(ARGV[4])
else
  for i = 4, #ARGV do
    local candidate = tonumber(ARGV[i])
    if candidate > now then
      deadline = candidate
      break
    end
  end
end

local current = tonumber(redis.call('HGET', KEYS[1], 'until'))
if current and current >= deadline then
  return fmt(current)
end
if deadline <= now then
  return fmt(now) -- nothing to wait for (zero or negative duration)
end
redis.call('HSET', KEYS[1], 'until', fmt(deadline), 'reason', ARGV[2])
redis.call('PEXPIRE', KEYS[1], fmt(math.ceil((deadline - now) / 1000)))
return fmt(deadline)
