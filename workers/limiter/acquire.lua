--[[
acquire.lua: admit one request into a quota pool only if EVERY configured limit has room, reserving
all of them or nothing; otherwise return how long to wait. Atomic (one script call).

KEYS (all of one pool, see keys.py):
  KEYS[1] limits    HASH   rpm ipm tpm rpd concurrency (absent field = not limited)
  KEYS[2] cooldown  HASH   until (µs) reason
  KEYS[3] rpm       STRING scheduled time of the last admission (µs): GCRA, see below
  KEYS[4] ipm       ZSET   sliding log, member "seq:images", score = admission time (µs)
  KEYS[5] tpm       ZSET   sliding log, member "seq:tokens", score = admission time (µs)
  KEYS[6] sums      HASH   ipm tpm rpm (running sums of the three logs) seq (member counter)
  KEYS[7] day       HASH   start (µs of the Pacific midnight that began the day) used
  KEYS[8] inflight  ZSET   holder -> lease expiry (µs)
  KEYS[9] usage     HASH   m (minute index) r i t (this minute) pr pi pt (previous minute)
  KEYS[10] adapt    HASH   the adaptive share (share.lua, prepended): scales rpm, ipm and tpm
  KEYS[11] requests ZSET   sliding log of admissions, member "seq:1", score = admission time (µs):
                           the exact count the share's drop reads, and the hard bound of rpm
ARGV:
  ARGV[1]     now in µs, or "" to use Redis TIME (injected clock for tests only)
  ARGV[2]     holder (concurrency slot owner; re-acquiring refreshes its lease)
  ARGV[3]     tokens of this request (>= 0)
  ARGV[4]     images of this request (>= 0)
  ARGV[5]     lease in µs
  ARGV[6]     longest wait reported for a full semaphore (µs): slots are usually released early
  ARGV[7..10] four consecutive Pacific midnights (µs), ascending
Returns {admitted 0|1, wait µs ("-1" = never fits), reason or "", now µs} (numbers as strings).

Algorithms: rpm is GCRA, one request per I = ceil(60e6/rpm) µs, smooth. Stored is the *scheduled*
time of the last admission, not the next slot, so a new rpm (or share) applies at once. An admission
that comes late (no task was waiting at the gate when its slot opened: a thread woke late, a claim
was in flight) keeps the schedule if it is late by up to one interval: the next slot is then due
sooner, so a pool that always has work gets its whole rate instead of losing every late moment.
After idle this banks one slot at most (a burst of 2); the requests log keeps the hard bound of at
most the configured rpm in any 60 s window.
ipm and tpm are weighted sliding logs (admit iff the costs admitted in the last 60 s plus this cost
fit): exact for any window and any cost, which GCRA is not once costs vary. rpd is a counter keyed
by its Pacific day; concurrency a ZSET of leases pruned on every call; cooldown a deadline.
rpm, ipm and tpm apply scaled by the pool's adaptive share (lowered after 429s the limiter did not
predict, adapt.lua); a request is "never fits" only against the configured limit itself.
A denial writes nothing but the removal of expired entries.
]]

local WINDOW = 60000000
local now_arg, holder = ARGV[1], ARGV[2]
local tokens, images = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, poll = tonumber(ARGV[5]), tonumber(ARGV[6])

-- Numbers passed to redis.call are printed with 14 digits; µs timestamps need 16. Format ourselves.
local function fmt(x)
  return string.format('%.0f', x)
end

local function clock()
  if now_arg ~= '' then
    return tonumber(now_arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local now = clock()

-- The Pacific day containing now: the last midnight <= now and the one after it.
local function pacific_day()
  for i = 3, 1, -1 do
    local start = tonumber(ARGV[6 + i])
    if start <= now then
      return start, tonumber(ARGV[7 + i])
    end
  end
  return tonumber(ARGV[7]), tonumber(ARGV[8])
end

local function cost_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local wait, reason, never = 0, '', false
local function block(w, why)
  if w > wait or reason == '' then
    wait, reason = w, why
  end
end

-- Drop log entries that left the window and return the sum still inside it.
local function prune_log(key, field)
  local cutoff = fmt(now - WINDOW)
  local stored = tonumber(redis.call('HGET', KEYS[6], field)) or 0
  local sum = stored
  local old = redis.call('ZRANGEBYSCORE', key, '-inf', cutoff)
  if #old > 0 then
    for _, member in ipairs(old) do
      sum = sum - cost_of(member)
    end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
  end
  if sum < 0 or redis.call('ZCARD', key) == 0 then
    sum = 0 -- self-heal: an empty log holds nothing, whatever the sum says
  end
  if sum ~= stored then
    redis.call('HSET', KEYS[6], field, fmt(sum))
    redis.call('PEXPIRE', KEYS[6], fmt(WINDOW / 1000 + 1000))
  end
  return sum
end

-- How long until the oldest entries free enough room for cost (entry at s leaves at s + WINDOW).
local function log_wait(key, excess)
  local freed, start = 0, 0
  while true do
    local page = redis.call('ZRANGE', key, start, start + 99, 'WITHSCORES')
    if #page == 0 then
      return 0
    end
    for i = 1, #page, 2 do
      freed = freed + cost_of(page[i])
      if freed >= excess then
        return tonumber(page[i + 1]) + WINDOW - now
      end
    end
    start = start + 100
  end
end

local function check_log(key, field, configured, limit, cost)
  if not limit or cost <= 0 then
    return 0
  end
  if cost > configured then
    never = never or field
    return 0
  end
  local sum = prune_log(key, field)
  if sum + cost > limit then
    block(log_wait(key, sum + cost - limit), field)
  end
  return sum
end

local function record_log(key, field, limit, cost, sum)
  if not limit or cost <= 0 then
    return
  end
  local seq = redis.call('HINCRBY', KEYS[6], 'seq', 1)
  redis.call('ZADD', key, fmt(now), fmt(seq) .. ':' .. fmt(cost))
  redis.call('HSET', KEYS[6], field, fmt(sum + cost))
  redis.call('PEXPIRE', key, fmt(WINDOW / 1000 + 1000))
  redis.call('PEXPIRE', KEYS[6], fmt(WINDOW / 1000 + 1000))
end

local function bump_usage()
  local minute = math.floor(now / WINDOW)
  local u = redis.call('HMGET', KEYS[9], 'm', 'r', 'i', 't')
  local stored = tonumber(u[1])
  if stored ~= minute then
    local r, i, t = '0', '0', '0'
    if stored == minute - 1 then
      r, i, t = u[2] or '0', u[3] or '0', u[4] or '0'
    end
    redis.call('HSET', KEYS[9], 'm', fmt(minute), 'pr', r, 'pi', i, 'pt', t, 'r', '0', 'i', '0', 't', '0')
  end
  redis.call('HINCRBY', KEYS[9], 'r', 1)
  redis.call('HINCRBY', KEYS[9], 'i', fmt(images))
  redis.call('HINCRBY', KEYS[9], 't', fmt(tokens))
  redis.call('PEXPIRE', KEYS[9], fmt(2 * WINDOW / 1000))
end

local limits = redis.call('HMGET', KEYS[1], 'rpm', 'ipm', 'tpm', 'rpd', 'concurrency')
local rpm, ipm, tpm = tonumber(limits[1]), tonumber(limits[2]), tonumber(limits[3])
local rpd, concurrency = tonumber(limits[4]), tonumber(limits[5])
local share = share_at(KEYS[10], now)
local rpm_now = scaled(rpm, share, 1)
local ipm_now, tpm_now = scaled(ipm, share, images), scaled(tpm, share, tokens)

-- 1. Check every limit; nothing below reserves anything (pruning expired state is not a reservation).
local cooldown_until = tonumber(redis.call('HGET', KEYS[2], 'until'))
if cooldown_until and cooldown_until > now then
  block(cooldown_until - now, 'cooldown')
end

local rpm_interval = rpm and math.ceil(WINDOW / rpm_now)
local rpm_slot = now -- the scheduled time of this admission (GCRA)
if rpm then
  local last = tonumber(redis.call('GET', KEYS[3]))
  if last then
    rpm_slot = math.max(last + rpm_interval, now - rpm_interval)
  end
  if rpm_slot > now then
    block(rpm_slot - now, 'rpm')
  end
end

local ipm_sum = check_log(KEYS[4], 'ipm', ipm, ipm_now, images)
local tpm_sum = check_log(KEYS[5], 'tpm', tpm, tpm_now, tokens)
local requests_sum = rpm and prune_log(KEYS[11], 'rpm') or 0
if rpm and requests_sum + 1 > rpm then
  block(log_wait(KEYS[11], requests_sum + 1 - rpm), 'rpm')
end

local day_start, day_end = pacific_day()
local day = redis.call('HMGET', KEYS[7], 'start', 'used')
local day_used = 0
if tonumber(day[1]) == day_start then
  day_used = tonumber(day[2]) or 0
end
if rpd and day_used >= rpd then
  block(day_end - now, 'rpd')
end

redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', fmt(now))
if concurrency and not redis.call('ZSCORE', KEYS[8], holder) then
  if redis.call('ZCARD', KEYS[8]) >= concurrency then
    local first = redis.call('ZRANGE', KEYS[8], 0, 0, 'WITHSCORES')
    block(math.min(tonumber(first[2]) - now, poll), 'concurrency')
  end
end

if never then
  return {0, '-1', never, fmt(now)}
end
if reason ~= '' then
  return {0, fmt(math.max(wait, 1)), reason, fmt(now)}
end

-- 2. Everything has room: reserve all of it.
if rpm then
  redis.call('SET', KEYS[3], fmt(rpm_slot), 'PX', fmt(WINDOW / 1000 + 1000))
end
record_log(KEYS[4], 'ipm', ipm, images, ipm_sum)
record_log(KEYS[5], 'tpm', tpm, tokens, tpm_sum)
record_log(KEYS[11], 'rpm', rpm, 1, requests_sum)
redis.call('HSET', KEYS[7], 'start', fmt(day_start), 'used', fmt(day_used + 1))
redis.call('PEXPIRE', KEYS[7], fmt(math.ceil((day_end - now) / 1000) + 60000))
redis.call('ZADD', KEYS[8], fmt(now + lease), holder)
local last = redis.call('ZRANGE', KEYS[8], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[8], fmt(math.ceil((tonumber(last[2]) - now) / 1000) + 1000))
bump_usage()
return {1, '0', '', fmt(now)}
