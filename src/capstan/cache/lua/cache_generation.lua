-- Cache contract (docs/contracts/cache.md): install the durable cache generation.
-- The single copy: the Python API (capstan.cache.redis) and the gateway (gateway/src/cache.ts)
-- both load this file. KEYS[1] = capstan:cache:generation; ARGV[1] = the generation the
-- database holds. Never goes back (a process that read the database before a bump must not
-- undo it). Returns the generation now in Redis.
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if want > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return want
end
return cur
