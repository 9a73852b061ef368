/** Document reads through the shared cache-aside contract (docs/contracts/cache.md). */
import type { Pool } from 'pg';
import { CacheUnavailable, DocumentCache, documentKey } from './cache';
import type { Metrics } from './metrics';
import { parse, stringify } from './pyjson';

export interface Loaded {
  version: number;
  payload: Buffer;
}

export interface ReadResult {
  loaded: Loaded | null;
  cache: 'hit' | 'miss' | 'bypass' | 'degraded';
}

interface Row {
  id: string;
  collection: string;
  title: string;
  body: string;
  tags: string;
  metadata: string;
  version: number;
  created_at: string;
  updated_at: string;
}

// Timestamps as text with microseconds in UTC (node-postgres' Date keeps milliseconds only).
const SELECT = `
SELECT id, collection, title, body, tags::text AS tags, metadata::text AS metadata, version,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') AS created_at,
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') AS updated_at
  FROM documents WHERE tenant_id = $1 AND id = $2`;

/** A UTC timestamp as pydantic writes it: microseconds only when non-zero, then `Z`. */
export function pyDatetime(text: string): string {
  return (text.endsWith('.000000') ? text.slice(0, -7) : text) + 'Z';
}

/** The response body, byte for byte Python's `capstan.documents.service.serialize`. */
export function serialize(row: Row): Buffer {
  const parts = [
    `"id":${JSON.stringify(row.id)}`,
    `"collection":${JSON.stringify(row.collection)}`,
    `"title":${JSON.stringify(row.title)}`,
    `"body":${JSON.stringify(row.body)}`,
    `"tags":${stringify(parse(row.tags))}`,
    `"metadata":${stringify(parse(row.metadata))}`,
    `"version":${row.version}`,
    `"created_at":"${pyDatetime(row.created_at)}"`,
    `"updated_at":"${pyDatetime(row.updated_at)}"`,
  ];
  return Buffer.from('{' + parts.join(',') + '}', 'utf8');
}

export class DocumentReader {
  private inflight = new Map<string, Promise<Loaded | null>>();

  constructor(
    private readonly db: Pool,
    private readonly cache: DocumentCache,
    private readonly metrics: Metrics,
  ) {}

  async load(tenantId: string, docId: string): Promise<Loaded | null> {
    const { rows } = await this.db.query<Row>(SELECT, [tenantId, docId]);
    return rows[0] ? { version: rows[0].version, payload: serialize(rows[0]) } : null;
  }

  async read(tenantId: string, docId: string, bypass: boolean): Promise<ReadResult> {
    if (bypass) return this.count({ loaded: await this.load(tenantId, docId), cache: 'bypass' });
    const key = documentKey(tenantId, docId);
    try {
      const entry = await this.cache.get(key);
      if (entry) return this.count({ loaded: entry, cache: 'hit' });
    } catch (err) {
      if (!(err instanceof CacheUnavailable)) throw err;
      return this.count({ loaded: await this.load(tenantId, docId), cache: 'degraded' });
    }
    this.count({ loaded: null, cache: 'miss' });
    return { loaded: await this.loadOnce(key, tenantId, docId), cache: 'miss' };
  }

  /** Single flight: concurrent misses on one key in this process read the database once. */
  private loadOnce(key: string, tenantId: string, docId: string): Promise<Loaded | null> {
    const waiting = this.inflight.get(key);
    if (waiting) {
      this.metrics.coalesced.inc({ cache: 'documents' });
      return waiting;
    }
    const promise = (async () => {
      try {
        const loaded = await this.load(tenantId, docId);
        if (loaded) await this.fill(key, loaded);
        return loaded;
      } finally {
        this.inflight.delete(key);
      }
    })();
    this.inflight.set(key, promise);
    return promise;
  }

  private async fill(key: string, loaded: Loaded): Promise<void> {
    try {
      const stored = await this.cache.fill(key, loaded.version, loaded.payload);
      this.metrics.cacheFills.inc({ cache: 'documents', outcome: stored ? 'stored' : 'refused' });
    } catch (err) {
      if (!(err instanceof CacheUnavailable)) throw err;
    }
  }

  private count(r: ReadResult): ReadResult {
    this.metrics.cacheRequests.inc({ cache: 'documents', result: r.cache });
    return r;
  }
}
