-- Cache contract (docs/contracts/cache.md): read a document entry.
-- The single copy: the Python API (capstan.cache.redis) and the gateway (gateway/src/cache.ts)
-- both load this file. KEYS[1] = capstan:{tenant_id}:doc:{document_id},
-- KEYS[2] = capstan:cache:generation. Returns {v, d, generation}: v and d are nil unless the
-- entry holds a body filled under the current generation; generation is nil when unknown
-- (a flushed or new Redis: nothing is served until a process installs it from the database).
local gen = redis.call('GET', KEYS[2])
local entry = redis.call('HMGET', KEYS[1], 'v', 'd', 'g')
if not gen or entry[3] ~= gen then return {false, false, gen} end
return {entry[1], entry[2], gen}
