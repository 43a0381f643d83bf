"""The Lua scripts of the Redis presence store, one per multi-step change.

Every multi-step change is one script, so concurrent processes never see half of
it. The leave reasons the scripts write are ``@NAME@`` placeholders filled from
``protocol.LeaveReason``. The key layout is described in redis.py.
"""

from __future__ import annotations

from ..protocol import LeaveReason


def lua(source: str) -> str:
    """A script with its ``@NAME@`` placeholders replaced by LeaveReason literals.

    The reasons a script writes come from the one enum, never from a literal of its own.
    """
    for reason in LeaveReason:
        source = source.replace(f"@{reason.name}@", f"'{reason.value}'")
    if "@" in source:
        raise ValueError("a Lua script names a leave reason LeaveReason does not have")
    return source


_PRELUDE = r"""
local P = ARGV[1]
local function now_ms(arg)
  if arg and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function rk(room, suffix) return P .. ':r:' .. room .. ':' .. suffix end
local function ik(inst) return P .. ':i:' .. inst .. ':s' end
-- A tab is scoped to its member; tab ids never hold a newline, so the field is unambiguous.
local function tk(meta) return meta.tab .. '\n' .. meta.key end
-- The global expiry index: "room\nsession" -> expiry, so the reaper reads only what expired.
local function xk() return P .. ':x' end
local function xe(room, session) return room .. '\n' .. session end
local function remove(room, session)
  local raw = redis.call('HGET', rk(room, 'm'), session)
  if not raw then return nil end
  local meta = cjson.decode(raw)
  redis.call('ZREM', rk(room, 'z'), session)
  redis.call('ZREM', xk(), xe(room, session))
  redis.call('HDEL', rk(room, 'm'), session)
  if redis.call('HGET', rk(room, 't'), tk(meta)) == session then
    redis.call('HDEL', rk(room, 't'), tk(meta))
  end
  local last = 0
  if redis.call('HINCRBY', rk(room, 'k'), meta.key, -1) <= 0 then
    redis.call('HDEL', rk(room, 'k'), meta.key)
    last = 1
  end
  local u = P .. ':u:' .. meta.key
  if redis.call('HINCRBY', u, room, -1) <= 0 then redis.call('HDEL', u, room) end
  redis.call('SREM', ik(meta.instance), room .. '\n' .. session)
  if redis.call('ZCARD', rk(room, 'z')) == 0 then
    redis.call('SREM', P .. ':rooms', room)
    redis.call('DEL', rk(room, 'z'), rk(room, 'm'), rk(room, 'k'), rk(room, 't'))
  end
  return {raw, last}
end
local function place(room, meta, raw, expires)
  redis.call('ZADD', rk(room, 'z'), expires, meta.session)
  redis.call('ZADD', xk(), expires, xe(room, meta.session))
  redis.call('HSET', rk(room, 'm'), meta.session, raw)
  redis.call('HSET', rk(room, 't'), tk(meta), meta.session)
  redis.call('SADD', P .. ':rooms', room)
  redis.call('SADD', ik(meta.instance), room .. '\n' .. meta.session)
end
"""

# ARGV: P, room, meta, ttl, now, only_if_present, tab cap ('' for none)
# Returns {old meta or '', reason or '', old member left (0/1), new meta, first (0/1)},
# {} when only_if_present finds no meta, {0} when the tab cap refuses the meta.
_JOIN = _PRELUDE + r"""
local room, raw, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms(ARGV[5])
local meta = cjson.decode(raw)
if ARGV[6] == '1' and redis.call('HEXISTS', rk(room, 'm'), meta.session) == 0 then
  return {}
end
local old_raw = redis.call('HGET', rk(room, 'm'), meta.session)
local reason = @UPDATE@
if not old_raw then
  local old_session = redis.call('HGET', rk(room, 't'), tk(meta))
  if old_session then
    old_raw = redis.call('HGET', rk(room, 'm'), old_session)
    reason = @REPLACED@
  end
end
if old_raw then
  local old = cjson.decode(old_raw)
  if old.key == meta.key then
    -- Same member: swap the meta, no member-level leave or join.
    if old.session ~= meta.session then
      redis.call('ZREM', rk(room, 'z'), old.session)
      redis.call('ZREM', xk(), xe(room, old.session))
      redis.call('HDEL', rk(room, 'm'), old.session)
      redis.call('SREM', ik(old.instance), room .. '\n' .. old.session)
    end
    place(room, meta, raw, now + ttl)
    return {old_raw, reason, 0, raw, 0}
  end
  local removed = remove(room, old.session)
  local first = 0
  if redis.call('HINCRBY', rk(room, 'k'), meta.key, 1) == 1 then first = 1 end
  redis.call('HINCRBY', P .. ':u:' .. meta.key, room, 1)
  place(room, meta, raw, now + ttl)
  return {removed[1], @REPLACED@, removed[2], raw, first}
end
local cap = tonumber(ARGV[7] or '')
if cap and tonumber(redis.call('HGET', rk(room, 'k'), meta.key) or '0') >= cap then
  return {0}
end
local first = 0
if redis.call('HINCRBY', rk(room, 'k'), meta.key, 1) == 1 then first = 1 end
redis.call('HINCRBY', P .. ':u:' .. meta.key, room, 1)
place(room, meta, raw, now + ttl)
return {'', '', 0, raw, first}
"""

# ARGV: P, room, session. Returns {meta, last} or {}.
_LEAVE = _PRELUDE + r"""
local removed = remove(ARGV[2], ARGV[3])
if not removed then return {} end
return removed
"""

# ARGV: P, instance, instance_ttl, ttl, now, info, room1, session1, ...
# Returns the flat list of (room, session) pairs no longer held.
_REFRESH = _PRELUDE + r"""
local inst, inst_ttl, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms(ARGV[5])
redis.call('ZADD', P .. ':i', now, inst)
redis.call('SET', P .. ':i:' .. inst, now, 'PX', inst_ttl)
if ARGV[6] ~= '' then redis.call('HSET', P .. ':instinfo', inst, ARGV[6]) end
local missing = {}
for i = 7, #ARGV, 2 do
  local room, session = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', rk(room, 'z'), session) then
    redis.call('ZADD', rk(room, 'z'), now + ttl, session)
    redis.call('ZADD', xk(), now + ttl, xe(room, session))
  else
    table.insert(missing, room)
    table.insert(missing, session)
  end
end
return missing
"""

# ARGV: P, instance_ttl, now, batch. Returns a flat list of records:
# 'I', instance, info  |  'L', room, meta, last, reason  |  'M' (more expired than batch)
# Expired metas come from the global expiry index, at most ``batch`` a call: a pass
# costs what expired, not the number of rooms. Rooms written before the index existed
# are indexed once, by the first pass that finds no P:xv.
_REAP = _PRELUDE + r"""
local now = now_ms(ARGV[3])
local batch = tonumber(ARGV[4])
local out = {}
if redis.call('EXISTS', P .. ':xv') == 0 then
  for _, room in ipairs(redis.call('SMEMBERS', P .. ':rooms')) do
    local scored = redis.call('ZRANGE', rk(room, 'z'), 0, -1, 'WITHSCORES')
    for i = 1, #scored, 2 do
      redis.call('ZADD', xk(), scored[i + 1], xe(room, scored[i]))
    end
  end
  redis.call('SET', P .. ':xv', '1')
end
local lost = redis.call('ZRANGEBYSCORE', P .. ':i', '-inf', '(' .. (now - tonumber(ARGV[2])))
for _, inst in ipairs(lost) do
  table.insert(out, 'I'); table.insert(out, inst)
  table.insert(out, redis.call('HGET', P .. ':instinfo', inst) or '')
  for _, entry in ipairs(redis.call('SMEMBERS', ik(inst))) do
    local sep = string.find(entry, '\n', 1, true)
    local room = string.sub(entry, 1, sep - 1)
    local removed = remove(room, string.sub(entry, sep + 1))
    if removed then
      table.insert(out, 'L'); table.insert(out, room); table.insert(out, removed[1])
      table.insert(out, removed[2]); table.insert(out, @INSTANCE_LOST@)
    end
  end
  redis.call('DEL', ik(inst), P .. ':i:' .. inst)
  redis.call('ZREM', P .. ':i', inst)
  redis.call('HDEL', P .. ':instinfo', inst)
end
local due = redis.call('ZRANGEBYSCORE', xk(), '-inf', now, 'LIMIT', 0, batch)
for _, entry in ipairs(due) do
  local sep = string.find(entry, '\n', 1, true)
  local room, session = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
  local expires = redis.call('ZSCORE', rk(room, 'z'), session)
  if not expires then
    redis.call('ZREM', xk(), entry)  -- its meta is gone: a stale index entry
  elseif tonumber(expires) > now then
    redis.call('ZADD', xk(), expires, entry)  -- pushed back by a writer before the index
  else
    local removed = remove(room, session)
    if removed then
      table.insert(out, 'L'); table.insert(out, room); table.insert(out, removed[1])
      table.insert(out, removed[2]); table.insert(out, @EXPIRED@)
    else
      redis.call('ZREM', rk(room, 'z'), session)
      redis.call('ZREM', xk(), entry)
    end
  end
end
if #due == batch then table.insert(out, 'M') end
return out
"""

# ARGV: P, room, now. Returns the metas whose expiry is still ahead.
_MEMBERS = _PRELUDE + r"""
local room = ARGV[2]
local now = now_ms(ARGV[3])
local live = redis.call('ZRANGEBYSCORE', rk(room, 'z'), '(' .. now, '+inf')
local out = {}
-- HMGET in chunks: Lua's unpack() takes fewer than 8,000 values.
for first = 1, #live, 1000 do
  local last = math.min(first + 999, #live)
  local metas = redis.call('HMGET', rk(room, 'm'), unpack(live, first, last))
  for _, meta in ipairs(metas) do table.insert(out, meta) end
end
return out
"""

# KEYS: lease; ARGV: holder, ttl
_LEASE = r"""
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# The scripts as sent to Redis, reasons filled in.
SCRIPTS = {name: lua(source) for name, source in (
    ("join", _JOIN), ("leave", _LEAVE), ("refresh", _REFRESH), ("reap", _REAP),
    ("members", _MEMBERS), ("lease", _LEASE))}
