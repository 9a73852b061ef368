/** The rules the gateway shares with the Python services, checked against the vectors the
 * Python tests read too (tests/contract/vectors.json): one list of cases, two implementations. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { apiKeyId, headerToken } from '../auth';
import { CacheUnavailable, RedisLink } from '../cache';
import { checkPattern, Matcher } from '../realtime/patterns';
import { readRealtime } from '../realtime/wire';
import { noneMatch } from '../routes/documents';

// dist/test -> the repository's tests/contract.
const VECTORS = JSON.parse(readFileSync(resolve(__dirname, '../../../tests/contract/vectors.json'), 'utf8'));
const cases = (name: string): any[] => VECTORS[name].cases;

test('api key ids (tests/contract/vectors.json: api_key_id)', () => {
  for (const c of cases('api_key_id')) assert.equal(apiKeyId(c.token), c.key_id, c.token);
});

test('bearer tokens from the Authorization header (vectors: bearer)', () => {
  for (const c of cases('bearer')) {
    assert.equal(c.authorization === null ? null : headerToken(c.authorization), c.token, JSON.stringify(c.authorization));
  }
});

test('topic matching (vectors: topic_matches)', () => {
  for (const c of cases('topic_matches')) {
    assert.equal(new Matcher([c.pattern]).matches(c.routing_key), c.matches, `${c.pattern} ~ ${c.routing_key}`);
  }
});

test('pattern syntax (vectors: pattern_syntax)', () => {
  for (const c of cases('pattern_syntax')) {
    // Any entity allowed here: the known-entity check is the gateway's own (unit.test.ts).
    const problem = checkPattern(c.pattern, [c.pattern.split('.')[0]]);
    assert.equal(problem === null, c.valid, `${JSON.stringify(c.pattern)}: ${problem}`);
  }
});

test('If-None-Match (vectors: if_none_match)', () => {
  for (const c of cases('if_none_match')) {
    assert.equal(noneMatch(c.header ?? undefined, c.version), c.matches, JSON.stringify(c.header));
  }
});

test('the Redis breaker (vectors: redis_breaker)', async () => {
  const spec = VECTORS.redis_breaker;
  const realNow = Date.now;
  let clock = 0;
  Date.now = () => clock;
  const link = new RedisLink('redis://127.0.0.1:1'); // lazy: never connects; ops are stand-ins
  try {
    assert.equal(link.client.options.commandTimeout, spec.timeout_ms);
    for (const step of spec.steps) {
      clock = step.at_ms;
      let tried = false;
      const op = async () => {
        tried = true;
        if (step.op === 'connection_error') throw new Error('connect ECONNREFUSED');
        if (step.op === 'reply_error') throw Object.assign(new Error('ERR from a script'), { name: 'ReplyError' });
        return 'PONG';
      };
      let got: string;
      try {
        if (step.op === 'ping_ok') {
          (link.client as unknown as { ping: () => Promise<string> }).ping = op;
          await link.ping();
        } else {
          await link.call(op);
        }
        got = 'ok';
      } catch (err) {
        if (err instanceof CacheUnavailable) got = tried ? 'unavailable' : 'fails_fast';
        else if ((err as Error).name === 'ReplyError') got = 'reply_error';
        else throw err;
      }
      assert.equal(got, step.expect, JSON.stringify(step));
    }
  } finally {
    Date.now = realNow;
    void link.close();
  }
});

test('realtime messages, batched and single (vectors: realtime_batch)', () => {
  for (const c of cases('realtime_batch')) {
    const m = c.message;
    const { events, malformed } = readRealtime({ content: Buffer.from(m.body, 'utf8'), contentType: m.content_type, routingKey: m.routing_key, headers: m.headers });
    assert.deepEqual(events.map((e) => ({ seq: e.seq, key: e.key, tenant: e.tenantId })), c.read, m.body.slice(0, 60));
    assert.equal(malformed.length, c.malformed ?? 0);
    for (const e of events) assert.equal((JSON.parse(e.json) as { seq: number }).seq, e.seq); // what clients get
  }
});
