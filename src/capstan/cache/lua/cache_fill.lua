-- Cache contract (docs/contracts/cache.md): fill a document entry after a miss.
-- The single copy: the Python API (capstan.cache.redis) and the gateway (gateway/src/cache.ts)
-- both load this file. KEYS[1] = capstan:{tenant_id}:doc:{document_id},
-- KEYS[2] = capstan:cache:generation; ARGV = version, JSON body, TTL in milliseconds, the
-- generation the reader saw before its database read. Returns 1 if stored, 0 if refused.
-- Refused when the generation moved on since (or is unknown): the load may predate a write
-- whose invalidation never arrived.
local gen = redis.call('GET', KEYS[2])
if not gen or gen ~= ARGV[4] then return 0 end
-- Refused when something newer is there: a tombstone (v without d) or an entry of a later
-- version, or this version already, current.
local cur = redis.call('HMGET', KEYS[1], 'v', 'd', 'g')
if cur[1] then
  local v = tonumber(cur[1])
  local want = tonumber(ARGV[1])
  if v > want then return 0 end
  if v == want and cur[2] and cur[3] == gen then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2], 'g', gen)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
