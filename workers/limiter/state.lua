--[[
state.lua: a read-only snapshot of one pool, at one instant of the Redis clock, for the CLI and
metrics. Writes nothing (expired entries are skipped, not pruned).

KEYS: the same eleven keys as acquire.lua, in the same order (limits cooldown rpm ipm tpm sums day
  inflight usage adapt requests); share.lua is prepended.
ARGV:
  ARGV[1]    now in µs, or "" to use Redis TIME (injected clock for tests only)
  ARGV[2..5] four consecutive Pacific midnights (µs), ascending
Returns {now, rpm used, ipm used, tpm used, day used, day end, inflight, cooldown until or "",
  cooldown reason or "", adaptive share (ppm), drops of the share}: all strings; times in µs;
  "used" counts the last 60 s: exact from the requests/ipm/tpm logs when rpm/ipm/tpm are set,
  else estimated from the two minute buckets of `usage`.
]]

local WINDOW = 60000000

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

-- Sliding-window estimate from two minute buckets, for a pool without the matching log: the current
-- minute plus the previous one weighted by its overlap.
local function estimate(current, previous)
  local u = redis.call('HMGET', KEYS[9], 'm', current, previous)
  local minute = math.floor(now / WINDOW)
  local overlap = 1 - (now - minute * WINDOW) / WINDOW
  local stored = tonumber(u[1])
  if stored == minute then
    return (tonumber(u[2]) or 0) + (tonumber(u[3]) or 0) * overlap
  elseif stored == minute - 1 then
    return (tonumber(u[2]) or 0) * overlap
  end
  return 0
end

local function used(key, limit, current, previous, count_only)
  if not limit then
    return estimate(current, previous)
  end
  return logged_in_window(key, now, count_only)
end

local function day_bounds()
  for i = 3, 1, -1 do
    if tonumber(ARGV[1 + i]) <= now then
      return tonumber(ARGV[1 + i]), tonumber(ARGV[2 + i])
    end
  end
  return tonumber(ARGV[2]), tonumber(ARGV[3])
end

local limits = redis.call('HMGET', KEYS[1], 'rpm', 'ipm', 'tpm')
local day_start, day_end = day_bounds()
local day = redis.call('HMGET', KEYS[7], 'start', 'used')
local day_used = 0
if tonumber(day[1]) == day_start then
  day_used = tonumber(day[2]) or 0
end
local cooldown = redis.call('HMGET', KEYS[2], 'until', 'reason')
local cooldown_until, cooldown_reason = '', ''
if tonumber(cooldown[1]) and tonumber(cooldown[1]) > now then
  cooldown_until, cooldown_reason = cooldown[1], cooldown[2] or ''
end

return {
  fmt(now),
  string.format('%.3f', used(KEYS[11], tonumber(limits[1]), 'r', 'pr', true)),
  string.format('%.3f', used(KEYS[4], tonumber(limits[2]), 'i', 'pi')),
  string.format('%.3f', used(KEYS[5], tonumber(limits[3]), 't', 'pt')),
  fmt(day_used),
  fmt(day_end),
  fmt(redis.call('ZCOUNT', KEYS[8], '(' .. fmt(now), '+inf')),
  cooldown_until,
  cooldown_reason,
  fmt(share_at(KEYS[10], now)),
  fmt(tonumber(redis.call('HGET', KEYS[10], 'drops')) or 0),
}
