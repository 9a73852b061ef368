/** The shared Redis contract (docs/contracts/cache.md): document entries, sessions, rate limits.
 * The Lua scripts are the Python API's own files (src/capstan/cache/lua/), not a copy. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis, type RedisOptions } from 'ioredis';
import { sentinelOptions } from './redisOptions';

/** The text of one of the contract's Lua scripts. Their only copy is the Python package data
 * src/capstan/cache/lua/; `npm run build` copies it to dist/lua (scripts/copy-lua.js), beside
 * this file once compiled, in the repository and in the Docker image alike. */
export function loadScript(name: string): string {
  return readFileSync(join(__dirname, 'lua', name), 'utf8');
}

/** Fill after a miss, unless a tombstone or a later version is there, or the generation moved. */
export const FILL = loadScript('cache_fill.lua');
/** Read an entry of the current generation, and that generation. */
export const READ = loadScript('cache_read.lua');
/** Raise the generation to the database's (never lower it). */
export const GENERATION = loadScript('cache_generation.lua');
/** Replace the entry by a tombstone that remembers the newest version seen (tests use it to
 * play the writer's side of the contract; the gateway itself never writes documents). */
export const INVALIDATE = loadScript('cache_invalidate.lua');
/** GCRA on the Redis server's clock, the Python limiter's script: one budget per API key. */
export const GCRA = loadScript('rate_limit.lua');

export class CacheUnavailable extends Error {}

export const documentKey = (tenantId: string, docId: string) => `capstan:${tenantId}:doc:${docId}`;
export const GENERATION_KEY = 'capstan:cache:generation';
export const sessionKey = (tokenHash: string) => `capstan:session:${tokenHash}`;

type Scripted = Redis & {
  capstanFill(key: string, generationKey: string, version: number, payload: Buffer, ttlMs: number, generation: number): Promise<number>;
  capstanReadBuffer(key: string, generationKey: string): Promise<[Buffer | null, Buffer | null, Buffer | null]>;
  capstanGeneration(generationKey: string, generation: number): Promise<number>;
  capstanInvalidate(key: string, version: number, ttlMs: number): Promise<number>;
  capstanGcra(key: string, interval: number, tolerance: number): Promise<[number, number, string]>;
};

/** One Redis client with a breaker, like the Python RedisLink: after a connection failure every
 * call fails fast for `retryMs`, so an outage costs one timeout, not one per request. */
export class RedisLink {
  readonly client: Scripted;
  private downUntil = 0;

  constructor(url: string, timeoutMs = 500, private readonly retryMs = 1000) {
    const options: RedisOptions = {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: timeoutMs,
      connectTimeout: timeoutMs * 4,
      retryStrategy: (times) => Math.min(100 * times, 2000),
      // A connection still open to a demoted primary (after a Sentinel failover) answers
      // writes with READONLY: reconnect, which asks the sentinels for the new primary.
      reconnectOnError: (err) => (err.message.startsWith('READONLY') ? 1 : false),
    };
    const sentinel = sentinelOptions(url);
    const client = sentinel ? new Redis({ ...options, ...sentinel }) : new Redis(url, options);
    client.on('error', () => {}); // reported through calls and /readyz
    client.defineCommand('capstanFill', { numberOfKeys: 2, lua: FILL });
    client.defineCommand('capstanRead', { numberOfKeys: 2, lua: READ });
    client.defineCommand('capstanGeneration', { numberOfKeys: 1, lua: GENERATION });
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

/** An entry of the current generation (or null), and that generation (null: none installed). */
export interface CacheRead {
  entry: Entry | null;
  generation: number | null;
}

export class DocumentCache {
  constructor(private readonly link: RedisLink, private readonly ttlSeconds: number) {}

  /** cache_read.lua: a hit needs `v`, `d`, and `g` equal to the current generation. */
  async get(key: string): Promise<CacheRead> {
    const [v, d, g] = await this.link.call((c) => c.capstanReadBuffer(key, GENERATION_KEY));
    const generation = g == null ? null : Number(g.toString());
    if (v == null || d == null) return { entry: null, generation };
    return { entry: { version: Number(v.toString()), payload: d }, generation };
  }

  /** `generation` is the one `get` returned before the database read. */
  async fill(key: string, version: number, payload: Buffer, generation: number): Promise<boolean> {
    const stored = await this.link.call((c) =>
      c.capstanFill(key, GENERATION_KEY, version, payload, this.ttlSeconds * 1000, generation),
    );
    return stored === 1;
  }

  /** Raise the generation to `generation` (the database's); the one Redis now holds. */
  async installGeneration(generation: number): Promise<number> {
    return Number(await this.link.call((c) => c.capstanGeneration(GENERATION_KEY, generation)));
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
