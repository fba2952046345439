--[[
share.lua: the adaptive share of a pool, prepended to every script that needs it (scripts.py), so
the rule is written once. Not a script of its own.

The share (parts per million of the configured rpm/ipm/tpm) drops after a 429 the limiter did not
predict (adapt.lua) and comes back on its own: it stays at `low` for `hold` µs after the drop, then
rises by `rise` ppm per second until it is whole again. Computed from the time of the drop, so it
needs no writes to recover and every worker sees the same value. No key = the whole limit.
  adapt HASH: low (ppm) at (µs of the drop) hold (µs) rise (ppm per s) drops (count, for display)
]]

local FULL_SHARE = 1000000
local USAGE_WINDOW = 60000000 -- µs: the per-minute window of the upstream's rpm, ipm and tpm

local function share_at(key, at_now)
  local a = redis.call('HMGET', key, 'low', 'at', 'hold', 'rise')
  local low, at = tonumber(a[1]), tonumber(a[2])
  if not low or not at then
    return FULL_SHARE
  end
  local hold, rise = tonumber(a[3]) or 0, tonumber(a[4]) or 0
  local since = at_now - at - hold
  if since <= 0 then
    return low
  end
  return math.min(FULL_SHARE, math.floor(low + rise * since / 1000000))
end

-- A limit scaled by the share, never below `least` (a request that fits the limit must fit some day).
local function scaled(limit, share, least)
  if not limit then
    return nil
  end
  return math.max(least, math.floor(limit * share / FULL_SHARE))
end

-- What the pool was admitted in the last 60 s, exactly, from a sliding log of acquire.lua (members
-- "seq:cost", score = admission µs): `requests` counts entries (each costs 1), `ipm`/`tpm` sum costs.
local function logged_in_window(key, at_now, count_only)
  local after = '(' .. string.format('%.0f', at_now - USAGE_WINDOW)
  if count_only then
    return redis.call('ZCOUNT', key, after, '+inf')
  end
  local sum = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, after, '+inf')) do
    sum = sum + tonumber(string.match(member, ':(%d+)$'))
  end
  return sum
end
