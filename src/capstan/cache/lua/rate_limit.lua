-- Cache contract (docs/contracts/cache.md): one GCRA rate-limit hit, mirroring capstan.cache.gcra.
-- The single copy: the Python API (capstan.cache.redis) and the gateway (gateway/src/cache.ts)
-- both load this file. KEYS[1] = capstan:ratelimit:{api_key_id};
-- ARGV = emission interval (seconds), burst tolerance (seconds).
-- Returns {allowed 0|1, remaining, retry-after seconds as a string}.
-- Time comes from the Redis server so every replica of either service agrees.
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
return {1, remaining, '0'}
