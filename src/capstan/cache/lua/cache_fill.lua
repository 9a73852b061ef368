-- Cache contract (docs/contracts/cache.md): fill a document entry after a miss.
-- The single copy: the Python API (capstan.cache.redis) and the gateway (gateway/src/cache.ts)
-- both load this file. KEYS[1] = capstan:{tenant_id}:doc:{document_id};
-- ARGV = version, JSON body, TTL in milliseconds. Returns 1 if stored, 0 if refused.
-- Fill only if nothing newer is there: a tombstone (v without d) or an entry of a later version.
local cur = redis.call('HGET', KEYS[1], 'v')
if cur then
  local v = tonumber(cur)
  local want = tonumber(ARGV[1])
  if v > want then return 0 end
  if v == want and redis.call('HEXISTS', KEYS[1], 'd') == 1 then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
