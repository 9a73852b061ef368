/** Real servers for the gateway's own tests: a fresh PostgreSQL database built by Capstan's
 * migrations (the schema the gateway meets in production, never a copy), Redis, and an
 * isolated RabbitMQ namespace. */
import amqp from 'amqplib';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { Client } from 'pg';
import { buildApp } from '../app';
import { Services } from '../services';
import { loadSettings } from '../settings';
import { BATCH_CONTENT_TYPE } from '../realtime/wire';
import pino from 'pino';

export function servers(): { db: string; redis: string; amqp: string } | null {
  const db = process.env.CAPSTAN_TEST_DATABASE_URL;
  const redis = process.env.CAPSTAN_TEST_REDIS_URL;
  const amqpUrl = process.env.CAPSTAN_TEST_AMQP_URL;
  if (db && redis && amqpUrl) return { db, redis, amqp: amqpUrl };
  if (process.env.CAPSTAN_REQUIRE_SERVICES === '1') throw new Error('CAPSTAN_TEST_DATABASE_URL, _REDIS_URL and _AMQP_URL are required (scripts/services env)');
  return null;
}

/** The `capstan` command of this checkout (its .venv), or CAPSTAN_CLI. */
const CAPSTAN = process.env.CAPSTAN_CLI ?? resolve(__dirname, '../../../.venv/bin/capstan');

let template: Promise<string> | null = null;

/** A database migrated by Capstan's own Alembic migrations (`capstan migrate`), once per test
 * process; every harness copies it (CREATE DATABASE ... TEMPLATE), which takes milliseconds
 * where migrating takes seconds. Dropped when the process exits (`dropTemplate`). */
export function migratedTemplate(): Promise<string> {
  template ??= (async () => {
    const s = servers()!;
    const name = `gw_tpl_${randomBytes(5).toString('hex')}`;
    await adminQuery(s.db, `CREATE DATABASE "${name}"`);
    const url = new URL(s.db);
    url.pathname = `/${name}`;
    const run = spawnSync(CAPSTAN, ['migrate'], {
      env: { ...process.env, CAPSTAN_DATABASE_URL: url.toString() },
      encoding: 'utf8',
      timeout: 300_000,
    });
    if (run.status !== 0) {
      await adminQuery(s.db, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      throw new Error(`\`${CAPSTAN} migrate\` failed (${run.error ?? run.status}; set CAPSTAN_CLI or run scripts/bootstrap dev): ${run.stderr}`);
    }
    return name;
  })();
  return template;
}

export async function dropTemplate(): Promise<void> {
  if (!template) return;
  const name = await template.catch(() => null);
  template = null;
  if (name) await adminQuery(servers()!.db, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
}

async function adminQuery(url: string, sql: string): Promise<void> {
  const admin = new Client({ connectionString: url });
  await admin.connect();
  try {
    await admin.query(sql);
  } finally {
    await admin.end();
  }
}

export interface Harness {
  url: string;
  services: Services;
  db: Client;
  namespace: string;
  tenant(): Promise<{ id: string; key: string; keyId: string }>;
  /** Play the audit subscriber: append to the audit log, then publish to <ns>.realtime. */
  emit(tenantId: string, type: string, data?: Record<string, unknown>, publish?: boolean): Promise<number>;
  close(): Promise<void>;
}

export async function harness(env: Record<string, string> = {}): Promise<Harness> {
  const s = servers()!;
  const name = `gw_test_${randomBytes(5).toString('hex')}`;
  await adminQuery(s.db, `CREATE DATABASE "${name}" TEMPLATE "${await migratedTemplate()}"`);
  const dbUrl = new URL(s.db);
  dbUrl.pathname = `/${name}`;
  const db = new Client({ connectionString: dbUrl.toString() });
  await db.connect();
  const namespace = `gwt${randomBytes(4).toString('hex')}`;
  const settings = loadSettings({
    CAPSTAN_DATABASE_URL: dbUrl.toString(),
    CAPSTAN_CACHE_URL: s.redis,
    CAPSTAN_BROKER_URL: s.amqp,
    CAPSTAN_BROKER_NAMESPACE: namespace,
    CAPSTAN_GATEWAY_PORT: '0',
    CAPSTAN_RATE_LIMIT_PER_MINUTE: '1000000',
    CAPSTAN_RATE_LIMIT_BURST: '100000',
    // Every test client is 127.0.0.1 and Redis is shared: the failure-limit test sets its own.
    CAPSTAN_AUTH_FAILURES_PER_MINUTE: '1000000',
    CAPSTAN_AUTH_FAILURES_BURST: '100000',
    ...env,
  });
  const services = new Services(settings, pino({ level: 'warn' }));
  await services.start();
  await services.consumer.ready;
  await services.signals.ready;
  const app = await buildApp(services);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const conn = await amqp.connect(s.amqp);
  const channel = await conn.createChannel();
  return {
    url,
    services,
    db,
    namespace,
    async tenant() {
      const id = randomUUID();
      const keyId = randomBytes(8).toString('hex');
      const key = `cst_${keyId}_${randomBytes(32).toString('base64url')}`;
      await db.query('INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, now())', [id, `t-${id}`]);
      await db.query('INSERT INTO api_keys (id, tenant_id, name, key_hash, created_at) VALUES ($1, $2, $3, $4, now())', [
        keyId, id, 'test', createHash('sha256').update(key).digest('hex'),
      ]);
      return { id, key, keyId };
    },
    async emit(tenantId, type, data = {}, publish = true) {
      const envelope = {
        specversion: '1.0', id: randomUUID(), source: 'capstan', type: `capstan.${type}`, time: new Date().toISOString(),
        subject: 'documents/x', datacontenttype: 'application/json', tenantid: tenantId, data,
      };
      const { rows } = await db.query<{ seq: string }>(
        'INSERT INTO audit_log (event_id, tenant_id, type, subject, time, recorded_at, envelope) VALUES ($1,$2,$3,$4,now(),now(),$5) RETURNING seq',
        [envelope.id, tenantId, envelope.type, envelope.subject, JSON.stringify(envelope)],
      );
      const seq = Number(rows[0].seq);
      if (publish) {
        // As capstan.events.realtime does for an audit batch of one.
        channel.publish(`${namespace}.realtime`, 'audited', Buffer.from(JSON.stringify({ ...envelope, seq })), { contentType: BATCH_CONTENT_TYPE, headers: { count: 1, seq } });
      }
      return seq;
    },
    async close() {
      await services.close();
      await app.close();
      await channel.deleteExchange(`${namespace}.realtime`).catch(() => {});
      await conn.close().catch(() => {});
      await db.end();
      await adminQuery(s.db, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    },
  };
}

/** Read SSE frames from a fetch response body. */
export class SseReader {
  private buf = '';
  private reader: ReadableStreamDefaultReader<Uint8Array>;
  private decoder = new TextDecoder();
  constructor(body: ReadableStream<Uint8Array>) {
    this.reader = body.getReader();
  }
  async next(timeoutMs = 5000): Promise<{ id?: string; event?: string; data?: string }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.buf.indexOf('\n\n');
      if (end >= 0) {
        const frame = this.buf.slice(0, end);
        this.buf = this.buf.slice(end + 2);
        const out: Record<string, string> = {};
        for (const line of frame.split('\n')) {
          if (line.startsWith(':')) continue;
          const i = line.indexOf(':');
          if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trimStart();
        }
        if (out.data !== undefined || out.event !== undefined) return out;
        continue;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for an SSE frame');
      const chunk = await Promise.race([this.reader.read(), new Promise<never>((_, r) => setTimeout(() => r(new Error('timed out waiting for an SSE frame')), left))]);
      if (chunk.done) throw new Error('stream ended');
      this.buf += this.decoder.decode(chunk.value, { stream: true });
    }
  }
  async cancel() {
    await this.reader.cancel().catch(() => {});
  }
}
