/** Document reads through the shared cache-aside contract (docs/contracts/cache.md). */
import type { Pool } from 'pg';
import { CacheUnavailable, DocumentCache, documentKey } from './cache';
import type { Metrics } from './metrics';

export interface Loaded {
  version: number;
  payload: Buffer;
}

export interface ReadResult {
  loaded: Loaded | null;
  cache: 'hit' | 'miss' | 'bypass' | 'degraded';
}

/** A row without its rendering: written around Capstan (raw SQL), so there are no bytes to
 * serve; the gateway never serializes a row itself. */
export class NotRendered extends Error {
  constructor(readonly docId: string) {
    super(
      `document ${docId} has no stored rendering (written around the API); ` +
        'read it through the API, or run `capstan data check --fix`',
    );
  }
}

/** The bytes Python rendered when it wrote this version (`documents.rendered`, migration 0010):
 * the response body, byte for byte the API's, served without parsing. */
const SELECT = 'SELECT version, rendered FROM documents WHERE tenant_id = $1 AND id = $2';

const GENERATION = 'SELECT generation FROM cache_generation WHERE id = 1';

/** Cache-aside reads, with the API's generation rule (docs/contracts/cache.md, "Generations"):
 * after any failure to reach Redis (or finding no generation there) no entry is served until
 * this instance has installed the database's generation in Redis; `watch` does so every
 * CAPSTAN_CACHE_GENERATION_POLL_SECONDS anyway, which also notices an outage while idle. */
export class DocumentReader {
  private inflight = new Map<string, Promise<Loaded | null>>();
  private synced = false;
  private losses = 0; // counts lost(): an install that overlapped one does not count
  private syncing: Promise<boolean> | null = null;
  private retryAt = 0;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly db: Pool,
    private readonly cache: DocumentCache,
    private readonly metrics: Metrics,
  ) {}

  async load(tenantId: string, docId: string): Promise<Loaded | null> {
    const { rows } = await this.db.query<{ version: number; rendered: Buffer | null }>(SELECT, [tenantId, docId]);
    if (!rows[0]) return null;
    if (rows[0].rendered === null) throw new NotRendered(docId);
    return { version: rows[0].version, payload: rows[0].rendered };
  }

  async read(tenantId: string, docId: string, bypass: boolean): Promise<ReadResult> {
    if (bypass) return this.count({ loaded: await this.load(tenantId, docId), cache: 'bypass' });
    const key = documentKey(tenantId, docId);
    let generation: number | null = null;
    if (await this.sync()) {
      try {
        const got = await this.cache.get(key);
        if (got.entry) return this.count({ loaded: got.entry, cache: 'hit' });
        if (got.generation === null) this.lost(); // a flushed or new Redis: install it first
        generation = got.generation;
      } catch (err) {
        if (!(err instanceof CacheUnavailable)) throw err;
        this.lost();
      }
    }
    if (generation === null) return this.count({ loaded: await this.load(tenantId, docId), cache: 'degraded' });
    this.count({ loaded: null, cache: 'miss' });
    return { loaded: await this.loadOnce(key, tenantId, docId, generation), cache: 'miss' };
  }

  /** Stop trusting the cache until the next install. */
  lost(): void {
    this.losses += 1;
    if (this.synced) this.metrics.generationSyncs.inc({ cache: 'documents', outcome: 'lost' });
    this.synced = false;
  }

  /** Install the database's generation unless done since the last failure; false while Redis
   * cannot be reached (then tried again at most every 500 ms by requests). */
  async sync(): Promise<boolean> {
    if (this.synced) return true;
    if (Date.now() < this.retryAt) return false;
    this.syncing ??= this.install().finally(() => {
      this.syncing = null;
    });
    return this.syncing;
  }

  private async install(): Promise<boolean> {
    const losses = this.losses;
    const { rows } = await this.db.query<{ generation: string }>(GENERATION);
    const generation = rows[0] ? Number(rows[0].generation) : 1;
    try {
      await this.cache.installGeneration(generation);
    } catch (err) {
      if (!(err instanceof CacheUnavailable)) throw err;
      this.synced = false;
      this.retryAt = Date.now() + 500;
      this.metrics.generationSyncs.inc({ cache: 'documents', outcome: 'failed' });
      return false;
    }
    this.metrics.generationSyncs.inc({ cache: 'documents', outcome: 'installed' });
    if (this.losses !== losses) return false; // a failure meanwhile: install again first
    this.synced = true;
    this.retryAt = 0;
    return true;
  }

  /** Install the generation every `seconds` (a bump by a writer cut off from Redis reaches
   * this instance within that time; reaching Redis notices an outage while no request comes). */
  watch(seconds: number, log: (err: Error) => void): void {
    this.timer = setInterval(() => {
      if (this.syncing) return;
      this.syncing = this.install()
        .catch((err: Error) => {
          log(err);
          return this.synced;
        })
        .finally(() => {
          this.syncing = null;
        });
    }, seconds * 1000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Single flight: concurrent misses on one key in this process read the database once. */
  private loadOnce(key: string, tenantId: string, docId: string, generation: number): Promise<Loaded | null> {
    const waiting = this.inflight.get(key);
    if (waiting) {
      this.metrics.coalesced.inc({ cache: 'documents' });
      return waiting;
    }
    const promise = (async () => {
      try {
        const loaded = await this.load(tenantId, docId);
        if (loaded) await this.fill(key, loaded, generation);
        return loaded;
      } finally {
        this.inflight.delete(key);
      }
    })();
    this.inflight.set(key, promise);
    return promise;
  }

  private async fill(key: string, loaded: Loaded, generation: number): Promise<void> {
    try {
      const stored = await this.cache.fill(key, loaded.version, loaded.payload, generation);
      this.metrics.cacheFills.inc({ cache: 'documents', outcome: stored ? 'stored' : 'refused' });
    } catch (err) {
      if (!(err instanceof CacheUnavailable)) throw err;
      this.lost();
    }
  }

  private count(r: ReadResult): ReadResult {
    this.metrics.cacheRequests.inc({ cache: 'documents', result: r.cache });
    return r;
  }
}
