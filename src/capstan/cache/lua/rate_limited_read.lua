-- Cache contract (docs/contracts/cache.md): a rate-limit hit and a document read in one round
-- trip, for the API's cached GET /v1/documents/{id}. The single copy: capstan.cache.redis loads it.
-- KEYS[1] = capstan:ratelimit:{api_key_id}, KEYS[2] = capstan:{tenant_id}:doc:{document_id},
-- KEYS[3] = capstan:cache:generation; ARGV = emission interval (seconds), burst tolerance
-- (seconds). Returns {allowed 0|1, remaining, retry-after seconds as a string, v, d,
-- generation}: the GCRA decision of rate_limit.lua, then what cache_read.lua returns for
-- KEYS[2] (nothing more when refused).
-- The GCRA below is rate_limit.lua's line for line: tests/contract/test_cache_contract.py checks
-- that both scripts decide alike.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance - interval
if now < allow_at then
  return {0, 0, tostring(allow_at - now)}
end
-- %.17g: the exact double (tostring keeps 14 digits, rounding the time by up to 50 us).
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
local remaining = math.floor((tolerance - (new_tat - interval - now)) / interval + 1e-9)
if remaining < 0 then remaining = 0 end
local gen = redis.call('GET', KEYS[3])
local entry = redis.call('HMGET', KEYS[2], 'v', 'd', 'g')
if not gen or entry[3] ~= gen then return {1, remaining, '0', false, false, gen} end
return {1, remaining, '0', entry[1], entry[2], gen}
