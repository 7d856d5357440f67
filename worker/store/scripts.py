"""The Lua scripts :class:`worker.store.Store` runs: each makes one multi-key change atomic.

They take their keys from the Store (KEYS) and never build one; each comment says what the script decides.
"""

# Records a task's outcome only if the task has none yet, and in the same step clears the endpoint's
# pending key (if it is still this task's), appends the event, clears the mark of a settled endpoint
# (ARGV[7] '1'), takes a task known to have changed nothing out of the 24 h count ('0': out of ``P:acted`` and,
# when KEYS[11] is given, its project's ``P:acted:<project>``; with 'u', a result
# that may have changed something, now or in an earlier run of the task, it stays counted), adds a settled
# delete's price to the spend removed (ARGV[10]: USD/h, or 'unpriced' to count one of unknown price) and fills
# the notify outbox.
# A redelivered or retried task can never leave a second outcome, and a crash cannot leave half of one.
RECORD_OUTCOME = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[3], tonumber(now[1]) + tonumber(now[2]) / 1000000, ARGV[4])
  if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'outcome', 'data', ARGV[1])
  if ARGV[7] == '1' then
    redis.call('HDEL', KEYS[6], ARGV[4])
  elseif ARGV[7] == '0' then
    redis.call('ZREM', KEYS[8], ARGV[5])
    if KEYS[11] then redis.call('ZREM', KEYS[11], ARGV[5]) end
  end
  local claim = redis.call('HGET', KEYS[10], ARGV[4])
  if claim and string.match(claim, '^([^|]*)|') == ARGV[5] then redis.call('HDEL', KEYS[10], ARGV[4]) end
  redis.call('HINCRBY', KEYS[9], ARGV[9], 1)
  if ARGV[10] == 'unpriced' then
    redis.call('HINCRBY', KEYS[9], 'deletes_unpriced', 1)
  elseif ARGV[10] ~= '' then
    redis.call('HINCRBYFLOAT', KEYS[9], 'spend_removed_usd_per_hour', ARGV[10])
  end
  redis.call('RPUSH', KEYS[7], ARGV[1])
  redis.call('LTRIM', KEYS[7], -tonumber(ARGV[8]), -1)
  return false
end
return redis.call('GET', KEYS[1])
"""

# Claims each endpoint's pending key (SET NX with expiry) unless an outcome was recorded for the endpoint at
# or after ARGV[1] (Redis time): a delete that finished between the sweep's listing and this claim has
# settled what that listing showed, and must not be queued again. Every endpoint of one call is of one project:
# KEYS[4] is its 24 h count (``P:acted:<project>``), used only when ARGV[4] is '1' (a task with a project).
# The counts are scored and trimmed by Redis's clock, as outcomes are: a worker whose clock runs ahead would
# otherwise trim other workers' deletes out of the last 24 h for good.
CLAIM_PENDING = """
local since = tonumber(ARGV[1])
local live = ARGV[3] == '1'
local per_project = live and ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local claimed = {}
for i = 5, #KEYS do
  local j = i - 4
  local endpoint_id, task_id, request = ARGV[3 * j + 2], ARGV[3 * j + 3], ARGV[3 * j + 4]
  local score = redis.call('ZSCORE', KEYS[1], endpoint_id)
  if not (score and tonumber(score) >= since) then
    if redis.call('SET', KEYS[i], task_id, 'NX', 'EX', ARGV[2]) then
      redis.call('HSET', KEYS[2], endpoint_id, task_id .. '|' .. t[1] .. '|' .. request)
      -- A live claim counts for max_deletes_per_day (overall and its project's) from this moment: nothing
      -- between here and the publish (a killed sweep, a failed write) can leave a published delete uncounted.
      -- An unpublished one is taken out again by drop_claim (keep_counted=False).
      if live then redis.call('ZADD', KEYS[3], now, task_id) end
      if per_project then redis.call('ZADD', KEYS[4], now, task_id) end
      table.insert(claimed, endpoint_id)
    end
  end
end
if live and #claimed > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 86400)
  redis.call('EXPIRE', KEYS[3], 172800)
  if per_project then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 86400)
    redis.call('EXPIRE', KEYS[4], 172800)
  end
end
return claimed
"""

# Upgrade (remove after 2027-03): a project's pause, approval and 24 h count kept under its slug, as a janitor
# from before they were kept by id left them, move to its id. KEYS in sixes: the pause (slug, id), the approval
# (slug, id), the count (slug, id). A pause or approval the id already has wins; the counts are merged into the
# id's, and the slug's is kept: a worker still running the older code (a rolling upgrade) counts by it, and must
# not find it empty (it would queue a day's deletes again). It expires 48 h after the older code's last claim.
MOVE_PROJECT_LIMITS = """
for i = 1, #KEYS, 6 do
  for j = i, i + 2, 2 do
    if redis.call('EXISTS', KEYS[j]) == 1 then
      if redis.call('EXISTS', KEYS[j + 1]) == 0 then redis.call('RENAME', KEYS[j], KEYS[j + 1])
      else redis.call('DEL', KEYS[j]) end
    end
  end
  if redis.call('EXISTS', KEYS[i + 4]) == 1 then
    redis.call('ZUNIONSTORE', KEYS[i + 5], 2, KEYS[i + 5], KEYS[i + 4], 'AGGREGATE', 'MAX')
    redis.call('EXPIRE', KEYS[i + 5], 172800)
  end
end
return true
"""

# How many entries of each 24 h count (KEYS: ``P:acted``, ``P:acted:<project>``) are of the last 24 h, by
# Redis's clock (the one the counts are scored with).
COUNT_LAST_DAY = """
local t = redis.call('TIME')
local since = tonumber(t[1]) + tonumber(t[2]) / 1000000 - 86400
local counts = {}
for i = 1, #KEYS do counts[i] = redis.call('ZCOUNT', KEYS[i], since, '+inf') end
return counts
"""

# A delete task's reads before it acts (:meth:`Store.task_state`), in one step: its outcome, the endpoint's claim
# and open sequence, whether an earlier run sent a change, and the endpoint's run lock, taken (SET NX PX) only
# when the task has no outcome yet and the claim names it, so a hand-sent or redelivered-after-the-end task
# never holds it.
TASK_STATE = """
local outcome = redis.call('GET', KEYS[1])
local claim = redis.call('HGET', KEYS[2], ARGV[1])
local sequence = redis.call('HGET', KEYS[3], ARGV[1])
local sent = redis.call('EXISTS', KEYS[4])
local locked = 0
if not outcome and claim and string.match(claim, '^([^|]*)|') == ARGV[2] then
  if redis.call('SET', KEYS[5], ARGV[3], 'NX', 'PX', ARGV[4]) then locked = 1 end
end
return {outcome, claim, sequence, sent, locked}
"""

# Renews the run lock only while it still holds this run's token (:class:`RunLease`): a lapsed lock taken by
# another run is never extended.
EXTEND_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Frees the run lock only if it still holds this run's token.
DEL_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Drops an endpoint's claim and its pending key, each only if it still names the task (ARGV[1]), so a newer
# claim on the endpoint survives. With ARGV[3] '1' the task also leaves the 24 h count (``P:acted``, and its
# project's, KEYS[4], when given): it never reached the broker, so it cannot have acted.
DROP_CLAIM = """
local claim = redis.call('HGET', KEYS[2], ARGV[2])
if claim and string.match(claim, '^([^|]*)|') == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  if KEYS[4] then redis.call('ZREM', KEYS[4], ARGV[1]) end
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Deletes a hash field only if it still holds the value read before: an expired exemption renewed meanwhile
# survives the prune.
HDEL_IF_UNCHANGED = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


# The lost-task check (:meth:`Store.find_lost_tasks`), in one atomic step so that no task can be seen in between
# two places. KEYS: claims, unacked (kombu), suspects, then the queue lists (kombu: one per priority), then one
# ``P:task:<id>`` per candidate; the sweep lock is KEYS[4] and the queues start at KEYS[5]. ARGV: number of
# queues, the confirmation delay (s), the largest queue it scans,
# then (endpoint id, task id) per candidate. A candidate whose claim is unchanged, whose task has no outcome and
# whose message is in no queue and not unacknowledged is lost *now*; it is reported only if it was already so
# at an earlier check at least the delay ago (its entry in the suspects hash), and that entry is taken here, so
# two recoverers never both publish it. Suspects no longer lost are forgotten. Returns the confirmed endpoint
# ids, or -1 while a sweep holds its lock (it may have claimed and not yet published) or when a queue is
# longer than the scan limit: nothing is decided then.
FIND_LOST = """
local nq = tonumber(ARGV[1])
local confirm = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
for q = 5, 4 + nq do
  if redis.call('LLEN', KEYS[q]) > tonumber(ARGV[3]) then return -1 end
end
local present = {}
local function scan(message)
  for id in string.gmatch(message, '"id":%s*"([^"]+)"') do present[id] = true end
end
for q = 5, 4 + nq do
  for _, message in ipairs(redis.call('LRANGE', KEYS[q], 0, -1)) do scan(message) end
end
for _, message in ipairs(redis.call('HVALS', KEYS[2])) do scan(message) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lost_now = {}
local confirmed = {}
local j = 0
for i = 4, #ARGV, 2 do
  j = j + 1
  local endpoint_id, task_id = ARGV[i], ARGV[i + 1]
  local claim = redis.call('HGET', KEYS[1], endpoint_id)
  if claim and string.match(claim, '^([^|]*)|') == task_id
      and redis.call('EXISTS', KEYS[4 + nq + j]) == 0 and not present[task_id] then
    lost_now[endpoint_id] = true
    local seen = redis.call('HGET', KEYS[3], endpoint_id)
    local first = seen and string.sub(seen, 1, #task_id + 1) == task_id .. '|'
      and tonumber(string.sub(seen, #task_id + 2))
    if first and now - first >= confirm then
      redis.call('HDEL', KEYS[3], endpoint_id)
      table.insert(confirmed, endpoint_id)
    elseif not first then
      redis.call('HSET', KEYS[3], endpoint_id, task_id .. '|' .. now)
    end
  end
end
for _, endpoint_id in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not lost_now[endpoint_id] then redis.call('HDEL', KEYS[3], endpoint_id) end
end
return confirmed
"""
