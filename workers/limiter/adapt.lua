--[[
adapt.lua: lower a pool's share after a 429 that the limiter's own counters did not predict (the
limiter admitted the call, so by its counts there was room: someone else spends the same quota).
Multiplicative decrease, additive recovery (share.lua).

Where the drop lands: what the pool was admitted in the last 60 s (exactly, from acquire.lua's logs,
as a share of the configured rpm/ipm/tpm, the most used of them) times `factor`. At the first refusal the
upstream's window is full, so that usage is the room the neighbour leaves: one drop lands just under
the gap, instead of several blind steps that each cost a window of 429s. The share never rises on a
drop, and one drop at most halves it (TCP's decrease): an idle pool refused once is not starved.

One drop per upstream window: a refusal within 60 s of the last drop, or of a call admitted before
it, is ignored. The upstream still counts the overload that drop answered for up to a window, so
those refusals say nothing new; a refusal after that says the lowered share is still too much.

KEYS:
  KEYS[1] limits  HASH  (only read: a pool without rpm, ipm or tpm has nothing to scale)
  KEYS[2] adapt   HASH  low at hold rise drops
  KEYS[3] requests ZSET (only read) acquire.lua's sliding logs of the last 60 s: admissions,
  KEYS[4] ipm      ZSET  images,
  KEYS[5] tpm      ZSET  tokens (each kept only while its limit is set)
ARGV:
  ARGV[1] now in µs, or "" to use Redis TIME (injected clock for tests only)
  ARGV[2] when the refused call was admitted (µs, Redis clock), or "" when unknown
  ARGV[3] factor (ppm): the new share is the share used in the last window times this
  ARGV[4] floor (ppm): the share never goes below it
  ARGV[5] hold (µs): how long the lowered share stays before it recovers
  ARGV[6] rise (ppm per second) of the recovery
Returns {applied 0|1, share before (ppm), share after (ppm)} (strings).
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

local before = share_at(KEYS[2], now)
local limits = redis.call('HMGET', KEYS[1], 'rpm', 'ipm', 'tpm')
if not (limits[1] or limits[2] or limits[3]) then
  return {'0', fmt(before), fmt(before)}
end
local last = tonumber(redis.call('HGET', KEYS[2], 'at'))
local admitted = tonumber(ARGV[2])
if last and (now - last < USAGE_WINDOW or (admitted and admitted < last)) then
  return {'0', fmt(before), fmt(before)}
end

local factor, floor = tonumber(ARGV[3]), tonumber(ARGV[4])
local hold, rise = tonumber(ARGV[5]), tonumber(ARGV[6])
local used = 0 -- ppm of the configured limit, the most used of rpm, ipm and tpm
for index, log in ipairs({KEYS[3], KEYS[4], KEYS[5]}) do
  local limit = tonumber(limits[index])
  if limit and limit > 0 then
    used = math.max(used, logged_in_window(log, now, index == 1) / limit * FULL_SHARE)
  end
end
local target = math.min(before, used) * factor / FULL_SHARE
local deepest = before * math.min(factor / FULL_SHARE, 0.5)
local after = math.floor(math.max(floor, deepest, target))
redis.call('HSET', KEYS[2], 'low', fmt(after), 'at', fmt(now), 'hold', fmt(hold), 'rise', fmt(rise))
redis.call('HINCRBY', KEYS[2], 'drops', 1)
-- Gone once whole again (plus a minute): an idle pool leaves nothing behind.
local back = hold + (FULL_SHARE - after) / math.max(rise, 1) * 1000000
redis.call('PEXPIRE', KEYS[2], fmt(math.ceil(back / 1000) + 60000))
return {'1', fmt(before), fmt(after)}
