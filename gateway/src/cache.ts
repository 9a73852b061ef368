/** The shared Redis contract (docs/contracts/cache.md): document entries, sessions, rate limits.
 * The Lua scripts are byte-for-byte the Python ones (src/capstan/cache/redis.py). */
import { Redis } from 'ioredis';

// Fill only if nothing newer is there: a tombstone (v without d) or an entry of a later version.
export const FILL = `
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
`;

// Replace the entry by a tombstone that remembers the newest version seen (tests use it to
// play the writer's side of the contract; the gateway itself never writes documents).
export const INVALIDATE = `
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local v = math.max(cur, tonumber(ARGV[1]))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', v)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return v
`;

// GCRA, the Python limiter's script; time comes from the Redis server so every replica agrees.
export const GCRA = `
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
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
local remaining = math.floor((tolerance - (new_tat - interval - now)) / interval + 1e-9)
if remaining < 0 then remaining = 0 end
return {1, remaining, '0'}
`;

export class CacheUnavailable extends Error {}

export const documentKey = (tenantId: string, docId: string) => `capstan:${tenantId}:doc:${docId}`;
export const sessionKey = (tokenHash: string) => `capstan:session:${tokenHash}`;

type Scripted = Redis & {
  capstanFill(key: string, version: number, payload: Buffer, ttlMs: number): Promise<number>;
  capstanInvalidate(key: string, version: number, ttlMs: number): Promise<number>;
  capstanGcra(key: string, interval: number, tolerance: number): Promise<[number, number, string]>;
};

/** One Redis client with a breaker, like the Python RedisLink: after a connection failure every
 * call fails fast for `retryMs`, so an outage costs one timeout, not one per request. */
export class RedisLink {
  readonly client: Scripted;
  private downUntil = 0;

  constructor(url: string, timeoutMs = 500, private readonly retryMs = 1000) {
    const client = new Redis(url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: timeoutMs,
      connectTimeout: timeoutMs * 4,
      retryStrategy: (times) => Math.min(100 * times, 2000),
    });
    client.on('error', () => {}); // reported through calls and /readyz
    client.defineCommand('capstanFill', { numberOfKeys: 1, lua: FILL });
    client.defineCommand('capstanInvalidate', { numberOfKeys: 1, lua: INVALIDATE });
    client.defineCommand('capstanGcra', { numberOfKeys: 1, lua: GCRA });
    this.client = client as Scripted;
  }

  async start(): Promise<void> {
    try {
      await this.client.connect();
    } catch {
      // Not fatal: reads degrade to the database and ioredis keeps reconnecting.
    }
  }

  get available(): boolean {
    return Date.now() >= this.downUntil;
  }

  async call<T>(op: (c: Scripted) => Promise<T>): Promise<T> {
    if (!this.available) throw new CacheUnavailable('redis is unavailable (breaker open)');
    return this.attempt(op);
  }

  private async attempt<T>(op: (c: Scripted) => Promise<T>): Promise<T> {
    try {
      const result = await op(this.client);
      this.downUntil = 0;
      return result;
    } catch (err) {
      if (isReplyError(err)) throw err;
      this.downUntil = Date.now() + this.retryMs;
      throw new CacheUnavailable(`redis: ${(err as Error).message}`);
    }
  }

  async ping(): Promise<void> {
    await this.attempt((c) => c.ping());
  }

  async close(): Promise<void> {
    this.client.disconnect();
  }
}

function isReplyError(err: unknown): boolean {
  return (err as { name?: string })?.name === 'ReplyError';
}

export interface Entry {
  version: number;
  payload: Buffer;
}

export class DocumentCache {
  constructor(private readonly link: RedisLink, private readonly ttlSeconds: number) {}

  /** HMGET key v d; a hit needs both fields. */
  async get(key: string): Promise<Entry | null> {
    const [v, d] = await this.link.call((c) => c.hmgetBuffer(key, 'v', 'd'));
    if (v == null || d == null) return null;
    return { version: Number(v.toString()), payload: d };
  }

  async fill(key: string, version: number, payload: Buffer): Promise<boolean> {
    const stored = await this.link.call((c) => c.capstanFill(key, version, payload, this.ttlSeconds * 1000));
    return stored === 1;
  }

  async invalidate(key: string, version: number): Promise<number> {
    return this.link.call((c) => c.capstanInvalidate(key, version, this.ttlSeconds * 1000));
  }
}

export interface RateDecision {
  allowed: boolean;
  remaining: number;
  retryAfter: number;
}

export class RateLimiter {
  constructor(private readonly link: RedisLink, private readonly perMinute: number, private readonly burst: number) {}

  /** Same script, key and parameters as the Python limiter: one shared budget per API key. */
  async hit(keyId: string): Promise<RateDecision> {
    const interval = 60 / this.perMinute;
    const [allowed, remaining, retry] = await this.link.call((c) =>
      c.capstanGcra(`capstan:ratelimit:${keyId}`, interval, interval * (this.burst - 1)),
    );
    return { allowed: Number(allowed) === 1, remaining: Number(remaining), retryAfter: Number(retry) };
  }
}
