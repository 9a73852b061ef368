/** The gateway against real PostgreSQL, Redis and RabbitMQ (scripts/services env). */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { randomUUID } from 'node:crypto';
import WebSocket from 'ws';
import { documentKey, FILL, GENERATION_KEY, INVALIDATE } from '../cache';
import { dropTemplate, harness, servers, SseReader, type Harness } from './helpers';

const skip = servers() === null ? 'needs CAPSTAN_TEST_DATABASE_URL, _REDIS_URL, _AMQP_URL' : false;

function wsClient(url: string, key?: string): Promise<{ ws: WebSocket; next: (ms?: number) => Promise<any>; closed: Promise<[number, string]> }> {
  const ws = new WebSocket(url.replace('http', 'ws') + '/v1/ws', { headers: key ? { authorization: `Bearer ${key}` } : {} });
  const queue: any[] = [];
  const waiters: ((m: any) => void)[] = [];
  ws.on('message', (d) => {
    const m = JSON.parse(d.toString());
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  const closed = new Promise<[number, string]>((r) => ws.on('close', (code, reason) => r([code, reason.toString()])));
  const next = (ms = 5000) =>
    queue.length ? Promise.resolve(queue.shift()) : new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('timed out waiting for a WS message')), ms);
      waiters.push((m) => { clearTimeout(t); res(m); });
    });
  return new Promise((resolve, reject) => {
    ws.on('open', () => resolve({ ws, next, closed }));
    ws.on('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    ws.on('error', reject);
  });
}

describe('gateway', { skip }, () => {
  let h: Harness;
  let redis: Redis;
  before(async () => {
    h = await harness({ CAPSTAN_GATEWAY_MAX_MESSAGE_BYTES: '1024', CAPSTAN_GATEWAY_HEARTBEAT_SECONDS: '60' });
    redis = new Redis(servers()!.redis);
  });
  after(async () => {
    redis?.disconnect();
    await h?.close();
    await dropTemplate();
  });

  test('credentials: API key, session token, missing, wrong, revoked', async () => {
    const t = await h.tenant();
    const get = (auth?: string) => fetch(`${h.url}/v1/documents/none`, { headers: auth ? { authorization: auth } : {} });
    let r = await get();
    assert.equal(r.status, 401);
    assert.equal(r.headers.get('content-type'), 'application/problem+json');
    assert.equal(r.headers.get('www-authenticate'), 'Bearer realm="capstan"');
    assert.equal(((await r.json()) as any).type, 'https://capstan.dev/problems/unauthorized');
    assert.equal((await get(`Bearer ${t.key}`)).status, 404); // authenticated; the document is missing
    assert.equal((await get(`Bearer ${t.key.slice(0, -2)}xx`)).status, 401);
    assert.equal((await get('Bearer cst_nothex')).status, 401);
    const session = 'csts_' + 'a'.repeat(43);
    const { createHash } = await import('node:crypto');
    await redis.set(`capstan:session:${createHash('sha256').update(session).digest('hex')}`, JSON.stringify({ tenant_id: t.id, key_id: t.keyId, created_at: 1 }), 'EX', 60);
    assert.equal((await get(`Bearer ${session}`)).status, 404);
    assert.equal((await get(`Bearer csts_${'b'.repeat(43)}`)).status, 401);
    const other = await h.tenant();
    await h.db.query('UPDATE api_keys SET revoked_at = now() WHERE id = $1', [other.keyId]);
    assert.equal((await get(`Bearer ${other.key}`)).status, 401);
  });

  test('failed authentication is limited per client address; successes never count', async () => {
    const limited = await harness({ CAPSTAN_AUTH_FAILURES_PER_MINUTE: '1', CAPSTAN_AUTH_FAILURES_BURST: '3' });
    try {
      const t = await limited.tenant();
      // Redis is shared with other runs: a loopback source address of this test's own.
      const octet = () => 1 + Math.floor(Math.random() * 250);
      const attacker = `127.${octet()}.${octet()}.${octet()}`;
      const bystander = `127.${octet()}.${octet()}.${octet()}`;
      const get = (from: string, key: string) =>
        new Promise<{ status: number; retryAfter?: string }>((resolve, reject) => {
          const req = http.get(
            `${limited.url}/v1/documents/none`,
            { localAddress: from, headers: { authorization: `Bearer ${key}` } },
            (res) => {
              res.resume();
              resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] as string | undefined });
            },
          );
          req.on('error', reject);
        });
      for (let i = 0; i < 10; i++) assert.equal((await get(attacker, t.key)).status, 404); // successes are free
      const bad = 'cst_0123456789abcdef_wrong';
      const codes = [];
      for (let i = 0; i < 4; i++) codes.push((await get(attacker, bad)).status);
      assert.deepEqual(codes, [401, 401, 401, 429]);
      const blocked = await get(attacker, t.key); // refused before any key lookup
      assert.equal(blocked.status, 429);
      assert.ok(Number(blocked.retryAfter) >= 1);
      assert.equal((await get(bystander, t.key)).status, 404);
    } finally {
      await limited.close();
    }
  });

  test('lifecycle: expired keys and disabled tenants are refused; a revocation ends a cached key at the next poll', async () => {
    const get = (key: string) => fetch(`${h.url}/v1/documents/none`, { headers: { authorization: `Bearer ${key}` } });
    const expired = await h.tenant();
    await h.db.query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", [expired.keyId]);
    assert.equal((await get(expired.key)).status, 401);
    const disabled = await h.tenant();
    await h.db.query('UPDATE tenants SET disabled_at = now() WHERE id = $1', [disabled.id]);
    assert.equal((await get(disabled.key)).status, 401);

    const cached = await h.tenant();
    assert.equal((await get(cached.key)).status, 404); // verified and cached
    await h.db.query('UPDATE api_keys SET revoked_at = now() WHERE id = $1', [cached.keyId]);
    assert.equal((await get(cached.key)).status, 404); // the cache does not know yet
    await h.db.query('INSERT INTO auth_revocations (key_id, tenant_id, effective_at) VALUES ($1, $2, now())', [cached.keyId, cached.id]);
    // The next poll applies it: this one, or the gateway's own timer if it ran first.
    const polled = await h.services.auth.pollRevocations();
    assert.ok(polled.length === 0 || polled.includes(cached.keyId));
    assert.equal((await get(cached.key)).status, 401);
    assert.deepEqual(await h.services.auth.pollRevocations(), []); // applied once
  });

  test('a revocation applies at the next poll even when the gateway clock is behind the database\'s', async () => {
    // effective_at is the database's now(); a poll that bounded it by the gateway's own clock
    // skipped a revocation stamped "later" than that clock: by clock skew, or by the
    // millisecond the gateway's Date truncates (a flaky CI failure of the test above).
    const get = (key: string) => fetch(`${h.url}/v1/documents/none`, { headers: { authorization: `Bearer ${key}` } });
    const t = await h.tenant();
    assert.equal((await get(t.key)).status, 404); // verified and cached
    await h.db.query('INSERT INTO auth_revocations (key_id, tenant_id, effective_at) VALUES ($1, $2, now())', [t.keyId, t.id]);
    const behind = Date.now() - 5_000;
    const RealDate = Date;
    class SlowDate extends RealDate {
      constructor(...args: unknown[]) {
        if (args.length === 0) super(behind);
        else super(...(args as [string]));
      }
      static override now(): number {
        return behind;
      }
    }
    globalThis.Date = SlowDate as DateConstructor;
    try {
      await h.services.auth.pollRevocations(); // this one, or the gateway's timer before it
    } finally {
      globalThis.Date = RealDate;
    }
    assert.equal((await get(t.key)).status, 401);
  });

  test('document reads follow the cache contract: miss fills, hit serves, tombstones refuse old fills', async () => {
    const t = await h.tenant();
    const id = '01a21780-0000-7000-8000-000000000001';
    // What Python's DocumentStore writes: the row and the response body it rendered for it.
    const rendered = (version: number, title: string) =>
      `{"id":"${id}","collection":"notes","title":"${title}","body":"B","tags":["x"],"metadata":{"b":1.0,"a":10},"version":${version},"created_at":"2026-11-26T10:19:55.904335Z","updated_at":"2026-11-26T10:19:56Z"}`;
    await h.db.query(
      `INSERT INTO documents (id, tenant_id, collection, title, body, tags, metadata, version, created_at, updated_at, rendered)
       VALUES ($1, $2, 'notes', 'T', 'B', '["x"]', '{"b": 1.0, "a": 10}', 3, '2026-11-26T10:19:55.904335Z', '2026-11-26T10:19:56Z', $3)`,
      [id, t.id, Buffer.from(rendered(3, 'T'))],
    );
    const get = (extra: Record<string, string> = {}) => fetch(`${h.url}/v1/documents/${id}`, { headers: { authorization: `Bearer ${t.key}`, ...extra } });
    let r = await get();
    const body = await r.text();
    assert.equal(r.headers.get('x-cache'), 'miss');
    assert.equal(r.headers.get('etag'), '"3"');
    assert.equal(body, rendered(3, 'T')); // the stored bytes, never re-serialized
    const key = documentKey(t.id, id);
    const generation = await redis.get(GENERATION_KEY); // installed by the gateway before its fill
    assert.ok(generation);
    assert.deepEqual(await redis.hmget(key, 'v', 'd', 'g'), ['3', body, generation]);
    r = await get();
    assert.equal(r.headers.get('x-cache'), 'hit');
    assert.equal(await r.text(), body);
    assert.equal((await get({ 'cache-control': 'no-cache' })).headers.get('x-cache'), 'bypass');
    // A writer commits version 4 and invalidates; a late fill with version 3 is refused.
    await redis.eval(INVALIDATE, 1, key, 4, 300000);
    assert.equal(await redis.eval(FILL, 2, key, GENERATION_KEY, 3, body, 300000, generation), 0);
    await h.db.query("UPDATE documents SET version = 4, title = 'T4', rendered = $2 WHERE id = $1", [id, Buffer.from(rendered(4, 'T4'))]);
    r = await get();
    assert.equal(r.headers.get('x-cache'), 'miss');
    assert.equal(r.headers.get('etag'), '"4"');
    assert.equal(await r.text(), rendered(4, 'T4'));
    // Another tenant: 404, never the first tenant's entry.
    const other = await h.tenant();
    r = await fetch(`${h.url}/v1/documents/${id}`, { headers: { authorization: `Bearer ${other.key}` } });
    assert.equal(r.status, 404);
    assert.equal(((await r.json()) as any).detail, `document ${id} does not exist`);
  });

  test('a row written around the API (no stored rendering) is a clear 500, never a guess', async () => {
    const t = await h.tenant();
    const id = '01a21780-0000-7000-8000-000000000002';
    await h.db.query(
      `INSERT INTO documents (id, tenant_id, collection, title, body, tags, metadata, version, created_at, updated_at)
       VALUES ($1, $2, 'notes', 'T', 'B', '[]', '{}', 1, now(), now())`,
      [id, t.id],
    );
    for (const extra of [{}, { 'cache-control': 'no-cache' }] as Record<string, string>[]) {
      const r = await fetch(`${h.url}/v1/documents/${id}`, { headers: { authorization: `Bearer ${t.key}`, ...extra } });
      assert.equal(r.status, 500);
      assert.equal(r.headers.get('content-type'), 'application/problem+json');
      const p = (await r.json()) as any;
      assert.equal(p.code, 'not-rendered');
      assert.match(p.detail, /capstan data check --fix/);
    }
    assert.equal(await redis.exists(documentKey(t.id, id)), 0); // nothing was filled
  });

  test('SSE: replay after Last-Event-ID, then live, tenant-scoped and filtered', async () => {
    const t = await h.tenant();
    const other = await h.tenant();
    const s1 = await h.emit(t.id, 'document.created');
    const s2 = await h.emit(t.id, 'task.succeeded');
    const s3 = await h.emit(t.id, 'document.updated', {}, false); // its publish was lost: replay only
    const r = await fetch(`${h.url}/v1/stream?types=document.*`, { headers: { authorization: `Bearer ${t.key}`, 'last-event-id': String(s1 - 1) } });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type')!, /text\/event-stream/);
    const sse = new SseReader(r.body!);
    assert.deepEqual([(await sse.next()).id, (await sse.next()).id], [String(s1), String(s3)]);
    const ready = await sse.next();
    assert.equal(ready.event, 'ready');
    assert.equal(ready.id, String(s3));
    await h.emit(other.id, 'document.created');
    const s5 = await h.emit(t.id, 'document.deleted');
    const live = await sse.next();
    assert.equal(live.id, String(s5));
    const env = JSON.parse(live.data!);
    assert.equal(env.seq, s5);
    assert.equal(env.type, 'capstan.document.deleted');
    assert.equal(env.tenantid, t.id);
    void s2;
    await sse.cancel();
  });

  test('SSE: bad patterns and cursors are 422 problems', async () => {
    const t = await h.tenant();
    const auth = { authorization: `Bearer ${t.key}` };
    for (const [q, headers, field] of [
      ['types=documnet.*', {}, 'types'],
      ['types=document.cre*', {}, 'types'],
      ['after=abc', {}, 'after'],
      ['', { 'last-event-id': '-3' }, 'Last-Event-ID'],
      ['after=999999999', {}, 'after'],
    ] as const) {
      const r = await fetch(`${h.url}/v1/stream?${q}`, { headers: { ...auth, ...headers } });
      assert.equal(r.status, 422, q);
      const p = (await r.json()) as any;
      assert.equal(p.field, field);
      assert.equal(p.type, 'https://capstan.dev/problems/invalid-input');
    }
    assert.equal((await fetch(`${h.url}/v1/stream`)).status, 401);
  });

  test('WebSocket: subscribe with a cursor, replay, live, errors, oversized messages', async () => {
    const t = await h.tenant();
    const s1 = await h.emit(t.id, 'task.succeeded');
    const s2 = await h.emit(t.id, 'document.created');
    const c = await wsClient(h.url, t.key);
    assert.equal((await c.next()).op, 'hello');
    c.ws.send(JSON.stringify({ op: 'subscribe', types: ['nope.*'] }));
    assert.equal((await c.next()).code, 'invalid-pattern');
    c.ws.send(JSON.stringify({ op: 'subscribe', types: ['task.*'], after: 'x' }));
    assert.equal((await c.next()).code, 'invalid-cursor');
    c.ws.send('not json');
    assert.equal((await c.next()).code, 'invalid-message');
    c.ws.send(JSON.stringify({ op: 'subscribe', types: ['task.*'], after: s1 - 1 }));
    assert.equal((await c.next()).seq, s1);
    const sub = await c.next();
    assert.equal(sub.op, 'subscribed');
    assert.equal(sub.position, s2);
    const s3 = await h.emit(t.id, 'task.failed');
    assert.equal((await c.next()).seq, s3);
    c.ws.send(JSON.stringify({ op: 'subscribe', types: ['#'] }));
    assert.equal((await c.next()).code, 'already-subscribed');
    c.ws.send(JSON.stringify({ op: 'ping', pad: 'x'.repeat(2000) }));
    const [code] = await c.closed;
    assert.equal(code, 1009);
    await assert.rejects(wsClient(h.url), /HTTP 401/);
  });

  test('signals: progress published on Redis reaches WS and SSE clients of its tenant only, without seq', async () => {
    const t = await h.tenant();
    const other = await h.tenant();
    const signal = (tenant: string, progress: number) =>
      JSON.stringify({ specversion: '1.0', id: randomUUID(), source: 'capstan', type: 'capstan.task.progress', time: new Date().toISOString(), subject: 'tasks/x', datacontenttype: 'application/json', tenantid: tenant, ephemeral: true, data: { id: 'x', progress, message: 'working' } });
    const ws = await wsClient(h.url, t.key);
    assert.equal((await ws.next()).op, 'hello');
    ws.ws.send(JSON.stringify({ op: 'subscribe', types: ['task.*'] }));
    const subscribed = await ws.next();
    assert.equal(subscribed.op, 'subscribed');
    const wsOther = await wsClient(h.url, other.key);
    assert.equal((await wsOther.next()).op, 'hello');
    wsOther.ws.send(JSON.stringify({ op: 'subscribe', types: ['#'] }));
    assert.equal((await wsOther.next()).op, 'subscribed');
    const r = await fetch(`${h.url}/v1/stream?types=task.progress`, { headers: { authorization: `Bearer ${t.key}` } });
    const sse = new SseReader(r.body!);
    assert.equal((await sse.next()).event, 'ready');

    // The other tenant's signal goes first: had it leaked, t's clients would see it first.
    assert.equal(await redis.publish(`capstan:${other.id}:signals`, signal(other.id, 0.1)), 1);
    const mine = signal(t.id, 0.5);
    assert.equal(await redis.publish(`capstan:${t.id}:signals`, mine), 1); // one gateway listens
    const pushed = await ws.next();
    assert.deepEqual(pushed, JSON.parse(mine)); // forwarded as published
    assert.equal(pushed.ephemeral, true);
    assert.equal('seq' in pushed, false);
    const frame = await sse.next();
    assert.deepEqual([frame.event, frame.id, frame.data], ['signal', undefined, mine]);
    assert.equal((await wsOther.next()).tenantid, other.id);

    // Durable events keep their seq order around signals; a signal moves no cursor.
    const seq = await h.emit(t.id, 'task.succeeded');
    const ev = await ws.next();
    assert.deepEqual([ev.seq, ev.type], [seq, 'capstan.task.succeeded']);
    const metrics = await (await fetch(`${h.url}/metrics`)).text();
    assert.match(metrics, /capstan_gateway_signals_sent_total\{transport="ws"\} [1-9]/);
    assert.match(metrics, /capstan_gateway_signals_sent_total\{transport="sse"\} 1/);
    ws.ws.close();
    wsOther.ws.close();
    await sse.cancel();
  });

  test('ops: healthz, readyz, metrics', async () => {
    assert.deepEqual(await (await fetch(`${h.url}/healthz`)).json(), { status: 'ok' });
    const ready = (await (await fetch(`${h.url}/readyz`)).json()) as any;
    assert.equal(ready.status, 'ready');
    assert.deepEqual(Object.keys(ready.checks), ['database', 'cache', 'broker']);
    const text = await (await fetch(`${h.url}/metrics`)).text();
    for (const name of ['capstan_gateway_connections', 'capstan_gateway_messages_sent_total', 'capstan_gateway_events_replayed_total', 'capstan_gateway_resume_requests_total', 'capstan_http_requests_total', 'capstan_cache_requests_total']) {
      assert.ok(text.includes(name), name);
    }
  });
});
