import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { RedisLink } from '../cache';
import { sentinelOptions } from '../redisOptions';
import { brokerNodes } from '../realtime/nodes';
import { hostList } from '../database';
import { checkPattern, Matcher } from '../realtime/patterns';
import { parseCursor } from '../realtime/request';
import { Subscriber, type RtEvent, type Sink } from '../realtime/subscriber';
import { Hub } from '../realtime/hub';
import { parseSignal, type RtSignal } from '../realtime/signals';
import { Metrics } from '../metrics';
import type { Pool } from 'pg';
import pino from 'pino';

test('the Redis scripts are the shared contract files, byte for byte, and nothing else', () => {
  // dist/test -> the repository's Python package data, the scripts' only copy.
  const shared = resolve(__dirname, '../../../src/capstan/cache/lua');
  const files = readdirSync(shared).filter((name) => name.endsWith('.lua')).sort();
  assert.deepEqual(files, [
    'cache_fill.lua',
    'cache_generation.lua',
    'cache_invalidate.lua',
    'cache_read.lua',
    'rate_limit.lua',
    'rate_limited_read.lua', // the API's cached read (rate limit + cache_read); unused here
  ]);
  const link = new RedisLink('redis://127.0.0.1:1'); // lazy: never connects
  try {
    const registered = link.client.scriptsSet as Record<string, { lua: string }>;
    const byCommand: Record<string, string> = {
      capstanFill: 'cache_fill.lua',
      capstanRead: 'cache_read.lua',
      capstanGeneration: 'cache_generation.lua',
      capstanInvalidate: 'cache_invalidate.lua',
      capstanGcra: 'rate_limit.lua',
    };
    assert.deepEqual(Object.keys(registered).sort(), Object.keys(byCommand).sort());
    for (const [command, file] of Object.entries(byCommand)) {
      assert.equal(registered[command].lua, readFileSync(join(shared, file), 'utf8'), command);
    }
  } finally {
    void link.close();
  }
});

test('patterns: a capstan. prefix is the CloudEvents type (matching itself: contract.test.ts)', () => {
  assert.ok(new Matcher(['capstan.task.*']).matches('task.failed'));
  assert.ok(new Matcher([' capstan.document.# ']).matches('document.created'));
});

test('bad patterns and cursors are refused with a reason', () => {
  assert.equal(checkPattern('document.*'), null);
  assert.match(checkPattern('documnet.*')!, /unknown entity "documnet"/);
  assert.match(checkPattern('document.cre*')!, /routing-key words/);
  assert.match(checkPattern('')!, /1 to 200/);
  assert.equal(parseCursor('42', 'after'), 42);
  assert.equal(parseCursor(undefined, 'after'), null);
  assert.throws(() => parseCursor('-1', 'after'), /non-negative integer/);
  assert.throws(() => parseCursor('abc', 'Last-Event-ID'), /Last-Event-ID/);
  assert.throws(() => parseCursor(1.5, 'after'));
});

class FakeSink implements Sink {
  readonly transport = 'ws' as const;
  sent: number[] = [];
  bytes = 0;
  closed?: string;
  corks = 0;
  /** Writes made while corked, per flush. */
  flushes: number[][] = [];
  private held: number[] = [];
  signals: string[] = [];
  write(ev: RtEvent) {
    this.sent.push(ev.seq);
    if (this.corks > 0) this.held.push(ev.seq);
  }
  writeSignal(s: RtSignal) {
    this.signals.push(s.json);
  }
  buffered() { return this.bytes; }
  close(reason: string) { this.closed = reason; }
  cork() { this.corks++; }
  uncork() {
    if (--this.corks === 0 && this.held.length) this.flushes.push(this.held.splice(0));
  }
}

const ev = (seq: number, key = 'document.created'): RtEvent => ({ seq, key, tenantId: 't', json: '{}' });
const counters = { sent() {}, dropped() {} };

test('a subscriber sends each seq once, in order, and buffers while held', () => {
  const sink = new FakeSink();
  const sub = new Subscriber('t', new Matcher(['document.*']), sink, { bufferBytes: 1000, bufferEvents: 10 }, counters);
  sub.hold();
  sub.offer(ev(5)); sub.offer(ev(3)); // live, arriving during the replay
  sub.deliver(ev(2, 'task.succeeded')); // replayed, not matching: skipped
  sub.deliver(ev(3)); // replayed
  sub.release();
  sub.offer(ev(4)); // late duplicate-or-older: dropped
  sub.offer(ev(6));
  assert.deepEqual(sink.sent, [3, 5, 6]);
  assert.equal(sub.position, 6);
});

test('a held subscriber that overflows, or a slow socket, is disconnected with a reason', () => {
  const sink = new FakeSink();
  const sub = new Subscriber('t', new Matcher(['#']), sink, { bufferBytes: 1000, bufferEvents: 2 }, counters);
  sub.hold();
  for (const s of [1, 2, 3]) sub.offer(ev(s));
  assert.equal(sink.closed, 'overflow');
  const slow = new FakeSink();
  const sub2 = new Subscriber('t', new Matcher(['#']), slow, { bufferBytes: 1000, bufferEvents: 2 }, counters);
  slow.bytes = 5000;
  sub2.offer(ev(1));
  assert.equal(slow.closed, 'slow_consumer');
});

test('a burst of live events reaches each client in one corked write, in order', async () => {
  const db = { query: async () => ({ rows: [{ m: '0' }] }) } as unknown as Pool;
  const hub = new Hub(db, new Metrics(), pino({ level: 'silent' }), 1);
  const a = new FakeSink();
  const b = new FakeSink();
  await hub.start(new Subscriber('t', new Matcher(['document.*']), a, { bufferBytes: 1e6, bufferEvents: 10 }, counters), null);
  await hub.start(new Subscriber('t', new Matcher(['#']), b, { bufferBytes: 1e6, bufferEvents: 10 }, counters), null);
  for (const seq of [1, 2, 3]) hub.dispatch(ev(seq, seq === 2 ? 'task.succeeded' : 'document.created'));
  assert.equal(a.corks, 1); // still corked: the flush waits for the end of this turn
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(a.flushes, [[1, 3]]);
  assert.deepEqual(b.flushes, [[1, 2, 3]]);
  assert.equal(a.corks + b.corks, 0);
  hub.dispatch(ev(4));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(a.flushes, [[1, 3], [4]]);
});

test('under load a client gets at most one write per flush linger; a quiet feed is not delayed', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] }); // setImmediate stays real: the end of a turn
  const db = { query: async () => ({ rows: [{ m: '0' }] }) } as unknown as Pool;
  const hub = new Hub(db, new Metrics(), pino({ level: 'silent' }), 1, 60_000);
  const a = new FakeSink();
  await hub.start(new Subscriber('t', new Matcher(['#']), a, { bufferBytes: 1e6, bufferEvents: 10 }, counters), null);
  const turn = () => new Promise((r) => setImmediate(r));
  hub.dispatch(ev(1));
  await turn();
  assert.deepEqual(a.flushes, [[1]]); // the first event after a quiet spell: at once
  hub.dispatch(ev(2));
  await turn();
  hub.dispatch(ev(3));
  await turn();
  assert.deepEqual(a.flushes, [[1]]); // within the linger: held, corked
  assert.equal(a.corks, 1);
  t.mock.timers.tick(60_000);
  assert.deepEqual(a.flushes, [[1], [2, 3]]); // one write for both
  assert.equal(a.corks, 0);
});

test('a redis+sentinel:// URL names the sentinels, the service, the database and the passwords', () => {
  assert.deepEqual(sentinelOptions('redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380/capstan/2?sentinel_password=x'), {
    sentinels: [{ host: '10.0.0.1', port: 26379 }, { host: '::1', port: 26380 }],
    name: 'capstan',
    db: 2,
    password: 's3cret',
    sentinelPassword: 'x',
  });
  assert.equal(sentinelOptions('redis+sentinel://h:1/svc')!.db, 0);
  assert.equal(sentinelOptions('redis://127.0.0.1:6379/0'), null);
  for (const bad of ['redis+sentinel:///capstan/0', 'redis+sentinel://h:1', 'redis+sentinel://h:1/capstan/zero', 'redis+sentinel://h/capstan']) {
    assert.throws(() => sentinelOptions(bad), Error, bad);
  }
});

test('a broker URL lists cluster nodes as URLs or as hosts, as the Python roles read it', () => {
  const want = ['amqp://u:p@r1:5672/capstan', 'amqp://u:p@r2:5672/capstan', 'amqp://u:p@r3/capstan'];
  assert.deepEqual(brokerNodes('amqp://u:p@r1:5672,r2:5672,r3/capstan'), want);
  assert.deepEqual(brokerNodes('amqp://u:p@r1:5672/capstan, amqp://u:p@r2:5672/capstan,amqp://u:p@r3/capstan'), want);
  assert.deepEqual(brokerNodes('amqp://u:p@r1:5672/'), ['amqp://u:p@r1:5672/']);
});

test('a libpq host list becomes one connection string per host; a plain URL is left to pg', () => {
  assert.deepEqual(hostList('postgresql://u:p@h1:5432,h2:5433/capstan?target_session_attrs=read-write&sslmode=disable'), {
    urls: ['postgresql://u:p@h1:5432/capstan?sslmode=disable', 'postgresql://u:p@h2:5433/capstan?sslmode=disable'],
    readWrite: true,
  });
  assert.deepEqual(hostList('postgres://h1,h2/db'), { urls: ['postgres://h1/db', 'postgres://h2/db'], readWrite: false });
  assert.equal(hostList('postgresql://u:p@h1:5432/capstan'), null);
});

const signalJson = (tenant: string, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ specversion: '1.0', id: 'x', source: 'capstan', type: 'capstan.task.progress', time: '2026-01-01T00:00:00Z', subject: 'tasks/1', tenantid: tenant, ephemeral: true, data: { id: '1', progress: 0.5, message: null }, ...extra });

test('a signal is taken only from its own tenant\'s channel, marked ephemeral, without seq', () => {
  const ok = parseSignal('capstan:t1:signals', signalJson('t1'));
  assert.deepEqual(ok && { key: ok.key, tenantId: ok.tenantId }, { key: 'task.progress', tenantId: 't1' });
  assert.equal(ok?.json, signalJson('t1')); // forwarded byte for byte
  assert.equal(parseSignal('capstan:t2:signals', signalJson('t1')), null); // claims another tenant
  assert.equal(parseSignal('capstan:t1:signals', signalJson('t1', { ephemeral: undefined })), null);
  assert.equal(parseSignal('capstan:t1:signals', signalJson('t1', { seq: 4 })), null);
  assert.equal(parseSignal('capstan:t1:signals', signalJson('t1', { type: 'task.progress' })), null);
  assert.equal(parseSignal('capstan:t1:signals', 'not json'), null);
  assert.equal(parseSignal('other:t1:signals', signalJson('t1')), null);
  const pretty = parseSignal('capstan:t1:signals', JSON.stringify(JSON.parse(signalJson('t1')), null, 2));
  assert.ok(pretty && !pretty.json.includes('\n')); // one SSE data line
});

test('signals reach the matching live subscribers of their tenant only, outside the seq order', async () => {
  const db = { query: async () => ({ rows: [{ m: '7' }] }) } as unknown as Pool;
  const metrics = new Metrics();
  const hub = new Hub(db, metrics, pino({ level: 'silent' }), 1);
  const tasks = new FakeSink();
  const docs = new FakeSink();
  const other = new FakeSink();
  const held = new FakeSink();
  const subTasks = new Subscriber('t', new Matcher(['task.*']), tasks, { bufferBytes: 1e6, bufferEvents: 10 }, counters);
  await hub.start(subTasks, null);
  await hub.start(new Subscriber('t', new Matcher(['document.*']), docs, { bufferBytes: 1e6, bufferEvents: 10 }, counters), null);
  await hub.start(new Subscriber('u', new Matcher(['#']), other, { bufferBytes: 1e6, bufferEvents: 10 }, counters), null);
  const catchingUp = new Subscriber('t', new Matcher(['task.progress']), held, { bufferBytes: 1e6, bufferEvents: 10 }, counters);
  await hub.start(catchingUp, null);
  catchingUp.hold();
  hub.signal(parseSignal('capstan:t:signals', signalJson('t'))!);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(tasks.signals, [signalJson('t')]);
  assert.deepEqual([docs.signals, other.signals, held.signals], [[], [], []]);
  assert.equal(subTasks.position, 7); // a signal moves no cursor
  assert.deepEqual(tasks.sent, []);
  assert.equal((await metrics.signalsDropped.get()).values[0]?.labels.reason, 'catching_up');
});
