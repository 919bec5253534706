//! The Lua scripts of the Redis store. Each one touches keys of one hash slot only (the registry
//! `{P}`, one shard `{P:s:<id>}`, one source `{P:src:<name>}` or one role `{P:role:<name>}`), so
//! every script runs unchanged on Redis Cluster. Keys a script derives from others share their hash
//! tag; the first key is always passed in `KEYS` so the call is routed to the right node.
//!
//! Errors the Rust side turns into typed errors are raised as `TB_<CODE> <detail>`.

/// Shared helpers: the server clock and the fence check of a lease value `owner\ntoken\nexpiry`.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function parse_lease(v)
  return string.match(v, '^(.*)\n(%d+)\n(%d+)$')
end
local function fenced(key, owner, token)
  local cur = redis.call('GET', key)
  if not cur then return false end
  local o, t = parse_lease(cur)
  return o == owner and t == token
end
"#;

fn with_prelude(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// KEYS: lease, fence. ARGV: owner, ttl ms. Returns {token, expires_at_ms}.
pub fn lease_acquire() -> String {
    with_prelude(
        r#"
local exp = now_ms() + tonumber(ARGV[2])
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, token = parse_lease(cur)
  if not owner then return redis.error_reply('TB_CORRUPT lease value is not owner/token/expiry') end
  if owner ~= ARGV[1] then return redis.error_reply('TB_LEASE_HELD ' .. owner) end
  redis.call('SET', KEYS[1], owner .. '\n' .. token .. '\n' .. exp, 'PX', ARGV[2])
  return {token, tostring(exp)}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. token .. '\n' .. exp, 'PX', ARGV[2])
return {tostring(token), tostring(exp)}
"#,
    )
}

/// KEYS: lease. ARGV: owner, token, ttl ms. Returns expires_at_ms.
pub fn lease_renew() -> String {
    with_prelude(
        r#"
if not fenced(KEYS[1], ARGV[1], ARGV[2]) then return redis.error_reply('TB_LEASE_LOST the lease is no longer current') end
local exp = now_ms() + tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. '\n' .. ARGV[2] .. '\n' .. exp, 'PX', ARGV[3])
return tostring(exp)
"#,
    )
}

/// KEYS: lease. ARGV: owner, token.
pub fn lease_release() -> String {
    with_prelude(
        r#"
if not fenced(KEYS[1], ARGV[1], ARGV[2]) then return redis.error_reply('TB_LEASE_LOST the lease is no longer current') end
redis.call('DEL', KEYS[1])
return 1
"#,
    )
}

/// KEYS: lease, stream. ARGV: owner, token, count.
/// Returns {'E', {{id, fields}, ...}} (first deliveries) or {'W', last_id} when nothing is
/// undelivered.
pub fn stream_read() -> String {
    with_prelude(
        r#"
if not fenced(KEYS[1], ARGV[1], ARGV[2]) then return redis.error_reply('TB_LEASE_LOST the lease is no longer current') end
local res = redis.pcall('XREADGROUP', 'GROUP', 'workers', ARGV[1], 'COUNT', ARGV[3], 'STREAMS', KEYS[2], '>')
if type(res) == 'table' and res.err then
  if string.sub(res.err, 1, 7) ~= 'NOGROUP' then return res end
  redis.call('XGROUP', 'CREATE', KEYS[2], 'workers', '0', 'MKSTREAM')
  res = redis.call('XREADGROUP', 'GROUP', 'workers', ARGV[1], 'COUNT', ARGV[3], 'STREAMS', KEYS[2], '>')
end
if res and res[1] and #res[1][2] > 0 then
  return {'E', res[1][2]}
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if last[1] then return {'W', last[1][1]} end
return {'W', '0-0'}
"#,
    )
}

/// KEYS: lease, stream. ARGV: owner, token, min idle ms, count, start (`-` or `(<id>`).
/// Returns {id, deliveries, fields, ...} of the claimed entries, oldest first.
pub fn stream_claim() -> String {
    with_prelude(
        r#"
if not fenced(KEYS[1], ARGV[1], ARGV[2]) then return redis.error_reply('TB_LEASE_LOST the lease is no longer current') end
local p = redis.pcall('XPENDING', KEYS[2], 'workers', 'IDLE', ARGV[3], ARGV[5], '+', ARGV[4])
if type(p) == 'table' and p.err then
  if string.sub(p.err, 1, 7) == 'NOGROUP' then return {} end
  return p
end
local out = {}
for _, e in ipairs(p) do
  local c = redis.call('XCLAIM', KEYS[2], 'workers', ARGV[1], ARGV[3], e[1])
  if c[1] and c[1][2] then
    table.insert(out, e[1])
    table.insert(out, e[4] + 1)
    table.insert(out, c[1][2])
  end
end
return out
"#,
    )
}

/// KEYS: lease, stream. ARGV: owner, token, ids... Acks and deletes the pending ones.
pub fn stream_ack() -> String {
    with_prelude(
        r#"
if not fenced(KEYS[1], ARGV[1], ARGV[2]) then return redis.error_reply('TB_LEASE_LOST the lease is no longer current') end
if redis.call('EXISTS', KEYS[2]) == 0 or #ARGV < 3 then return 0 end
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
local r = redis.pcall('XACK', KEYS[2], 'workers', unpack(ids))
if type(r) == 'table' and r.err then
  if string.sub(r.err, 1, 7) == 'NOGROUP' then return 0 end
  return r
end
if r == #ids then
  -- The common case: every id was pending, so every id is deleted.
  redis.call('XDEL', KEYS[2], unpack(ids))
  return r
end
-- Some ids were not pending (acked before, or never delivered). Delete the ones acked now:
-- delivered (at or before the group's last-delivered id) and no longer pending. Ids never
-- delivered stay; ids acked earlier were deleted then.
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
  local f = {}
  for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
  if f['name'] == 'workers' then last = f['last-delivered-id'] end
end
local function parts(x)
  local a, b = string.match(x, '^(%d+)-(%d+)$')
  return tonumber(a), tonumber(b)
end
local la, lb = parts(last or '0-0')
for _, id in ipairs(ids) do
  local ia, ib = parts(id)
  if ia and (ia < la or (ia == la and ib <= lb)) then
    if #redis.call('XPENDING', KEYS[2], 'workers', id, id, 1) == 0 then
      redis.call('XDEL', KEYS[2], id)
    end
  end
end
return r
"#,
    )
}

/// KEYS: stream. Returns {length, pending, oldest age ms}.
pub fn stream_stats() -> String {
    with_prelude(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, 0} end
local len = redis.call('XLEN', KEYS[1])
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], 'workers')
if type(p) == 'table' and not p.err then pending = p[1] end
local age = 0
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if first[1] then
  local ms = tonumber(string.match(first[1][1], '^(%d+)'))
  age = math.max(0, now_ms() - ms)
end
return {len, pending, age}
"#,
    )
}

/// KEYS: lease, checkpoint. ARGV: owner, token, position.
pub fn checkpoint() -> String {
    with_prelude(
        r#"
if not fenced(KEYS[1], ARGV[1], ARGV[2]) then return redis.error_reply('TB_LEASE_LOST the lease is no longer current') end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"#,
    )
}

/// KEYS: `{P}:shard-seq`. ARGV: registry base `{P}`, capacity. Returns the new id.
pub fn create_shard() -> String {
    r#"
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', ARGV[1] .. ':shard:' .. id, 'capacity', ARGV[2], 'draining', '0')
redis.call('ZADD', ARGV[1] .. ':shards', id, id)
return id
"#
    .to_string()
}

/// KEYS: shard hash. ARGV: field, value. `TB_NOT_FOUND` if the shard does not exist.
pub fn set_shard_field() -> String {
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('TB_NOT_FOUND shard') end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#
    .to_string()
}

/// KEYS: `{P}:shards`. ARGV: base, optional shard id.
/// Returns {id, capacity, draining, members, ...} ordered by id.
pub fn list_shards() -> String {
    r#"
local ids
if ARGV[2] then
  if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {} end
  ids = {ARGV[2]}
else
  ids = redis.call('ZRANGE', KEYS[1], 0, -1)
end
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[1] .. ':shard:' .. id, 'capacity', 'draining')
  table.insert(out, id)
  table.insert(out, h[1] or '0')
  table.insert(out, h[2] or '0')
  table.insert(out, redis.call('SCARD', ARGV[1] .. ':shard:' .. id .. ':things'))
end
return out
"#
    .to_string()
}

/// Keeps the change feed at most `limit` long, remembering the newest version dropped.
const FEED_TRIM: &str = r#"
local function trim_feed(base, feed, limit)
  local len = redis.call('XLEN', feed)
  if len <= limit then return end
  local old = redis.call('XRANGE', feed, '-', '+', 'COUNT', len - limit)
  local lastv = tonumber(string.match(old[#old][1], '^(%d+)'))
  local tr = tonumber(redis.call('GET', base .. ':assign:trimmed') or '0')
  if lastv > tr then redis.call('SET', base .. ':assign:trimmed', lastv) end
  redis.call('XTRIM', feed, 'MAXLEN', limit)
end
local function model_of(json)
  local ok, t = pcall(cjson.decode, json)
  if ok and type(t) == 'table' and t['model_version'] then return tostring(t['model_version']) end
  return '0'
end
"#;

/// KEYS: `{P}:things`. ARGV: base, feed limit, then (name, shard, model version, json) per Thing.
/// Returns the assignment version after the call.
pub fn put_things() -> String {
    format!(
        "{FEED_TRIM}{}",
        r#"
local base = ARGV[1]
local limit = tonumber(ARGV[2])
local n = (#ARGV - 2) / 4
local ts = base .. ':thing-shard'
local arrivals = {}
for i = 0, n - 1 do
  local name, shard = ARGV[3 + i * 4], ARGV[4 + i * 4]
  if redis.call('EXISTS', base .. ':shard:' .. shard) == 0 then
    return redis.error_reply('TB_NOT_FOUND shard ' .. shard)
  end
  if redis.call('HGET', ts, name) ~= shard then arrivals[shard] = (arrivals[shard] or 0) + 1 end
end
for shard, req in pairs(arrivals) do
  local cap = tonumber(redis.call('HGET', base .. ':shard:' .. shard, 'capacity') or '0')
  local members = redis.call('SCARD', base .. ':shard:' .. shard .. ':things')
  if members + req > cap then
    return redis.error_reply('TB_SHARD_FULL ' .. shard .. ' ' .. cap .. ' ' .. members .. ' ' .. req)
  end
end
local version = tonumber(redis.call('GET', base .. ':assign:version') or '0')
local nextv = version + 1
local changed = false
local seq = 0
local feed = base .. ':assign:feed'
for i = 0, n - 1 do
  local name, shard, model, json = ARGV[3 + i * 4], ARGV[4 + i * 4], ARGV[5 + i * 4], ARGV[6 + i * 4]
  local old = redis.call('HGET', KEYS[1], name)
  if old ~= json then
    changed = true
    local old_shard = redis.call('HGET', ts, name)
    local old_model = nil
    if old then old_model = model_of(old) end
    if old_shard ~= shard then
      if old_shard then redis.call('SREM', base .. ':shard:' .. old_shard .. ':things', name) end
      redis.call('SADD', base .. ':shard:' .. shard .. ':things', name)
      redis.call('HSET', ts, name, shard)
    end
    redis.call('HSET', KEYS[1], name, json)
    if old_shard ~= shard or old_model ~= model then
      redis.call('XADD', feed, nextv .. '-' .. seq, 't', name, 's', shard, 'm', model)
      seq = seq + 1
    end
  end
end
if changed then
  redis.call('SET', base .. ':assign:version', nextv)
  trim_feed(base, feed, limit)
  return nextv
end
return version
"#
    )
}

/// KEYS: `{P}:things`. ARGV: base, feed limit, names... Returns the version after the call.
pub fn remove_things() -> String {
    format!(
        "{FEED_TRIM}{}",
        r#"
local base = ARGV[1]
local limit = tonumber(ARGV[2])
local ts = base .. ':thing-shard'
local feed = base .. ':assign:feed'
local version = tonumber(redis.call('GET', base .. ':assign:version') or '0')
local nextv = version + 1
local seq = 0
for i = 3, #ARGV do
  local name = ARGV[i]
  local old = redis.call('HGET', KEYS[1], name)
  if old then
    local shard = redis.call('HGET', ts, name)
    if shard then redis.call('SREM', base .. ':shard:' .. shard .. ':things', name) end
    redis.call('HDEL', ts, name)
    redis.call('HDEL', KEYS[1], name)
    redis.call('XADD', feed, nextv .. '-' .. seq, 't', name, 's', '', 'm', model_of(old))
    seq = seq + 1
  end
end
if seq > 0 then
  redis.call('SET', base .. ':assign:version', nextv)
  trim_feed(base, feed, limit)
  return nextv
end
return version
"#
    )
}

/// KEYS: `{P}:thing-shard`. ARGV: base. Returns {version, name, shard, ...}.
pub fn snapshot() -> String {
    r#"
local v = redis.call('GET', ARGV[1] .. ':assign:version') or '0'
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, v)
return all
"#
    .to_string()
}

/// KEYS: `{P}:assign:feed`. ARGV: base, since, limit.
/// Returns {'R'} (reset) or {'C', reached, (version, thing, shard, model)...}.
/// A call's changes are returned whole: partial trailing calls are left for the next page, and a
/// single call longer than `limit` comes whole in one answer.
pub fn changes() -> String {
    r#"
local base = ARGV[1]
local version = tonumber(redis.call('GET', base .. ':assign:version') or '0')
local since = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local trimmed = tonumber(redis.call('GET', base .. ':assign:trimmed') or '0')
if since > version or since < trimmed then return {'R'} end
local function ver(e) return tonumber(string.match(e[1], '^(%d+)')) end
local es = redis.call('XRANGE', KEYS[1], (since + 1) .. '-0', '+', 'COUNT', limit)
local reached = version
if #es == limit and #es > 0 then
  local lastv = ver(es[#es])
  local nxt = redis.call('XRANGE', KEYS[1], '(' .. es[#es][1], '+', 'COUNT', 1)
  if nxt[1] then
    if ver(nxt[1]) == lastv then
      if ver(es[1]) == lastv then
        es = redis.call('XRANGE', KEYS[1], lastv .. '-0', lastv .. '-18446744073709551615')
        reached = lastv
      else
        local keep = {}
        for _, e in ipairs(es) do
          if ver(e) ~= lastv then table.insert(keep, e) end
        end
        es = keep
        reached = ver(es[#es])
      end
    else
      reached = lastv
    end
  end
end
local out = {'C', tostring(reached)}
for _, e in ipairs(es) do
  local f = {}
  for j = 1, #e[2], 2 do f[e[2][j]] = e[2][j + 1] end
  table.insert(out, tostring(ver(e)))
  table.insert(out, f['t'] or '')
  table.insert(out, f['s'] or '')
  table.insert(out, f['m'] or '0')
end
return out
"#
    .to_string()
}

/// KEYS: `{P}:workers`. ARGV: base, worker id, info json, ttl ms.
pub fn heartbeat() -> String {
    with_prelude(
        r#"
local now = now_ms()
local exp = ARGV[1] .. ':worker-exp'
local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
for _, id in ipairs(dead) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', exp, id)
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', exp, now + tonumber(ARGV[4]), ARGV[2])
return 1
"#,
    )
}

/// KEYS: `{P}:workers`. ARGV: base. Returns the info json of live workers.
pub fn list_workers() -> String {
    with_prelude(
        r#"
local ids = redis.call('ZRANGEBYSCORE', ARGV[1] .. ':worker-exp', '(' .. now_ms(), '+inf')
if #ids == 0 then return {} end
local infos = redis.call('HMGET', KEYS[1], unpack(ids))
local out = {}
for i, v in ipairs(infos) do
  if v then table.insert(out, v) end
end
return out
"#,
    )
}

/// KEYS: the group's zset (member → expiry). ARGV: member, ttl ms. Joins (or renews) and
/// returns the live members.
pub fn group_heartbeat() -> String {
    with_prelude(
        r#"
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#,
    )
}

/// KEYS: `{P}:dlq`. Deletes the whole DLQ and returns how many letters it held.
pub fn purge_all() -> String {
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"#
    .to_string()
}
