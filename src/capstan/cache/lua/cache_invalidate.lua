-- Cache contract (docs/contracts/cache.md): invalidate a document entry after a committed write.
-- The single copy: the Python API (capstan.cache.redis) and the gateway (gateway/src/cache.ts)
-- both load this file. KEYS[1] = capstan:{tenant_id}:doc:{document_id};
-- ARGV = new version, TTL in milliseconds. Returns the version the tombstone remembers.
-- Replace the entry by a tombstone that remembers the newest version seen.
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local v = math.max(cur, tonumber(ARGV[1]))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', v)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return v
