/** Realtime benchmark: hold N WebSocket clients, produce R events/s, measure delivery latency
 * and the gateway's memory per connection.
 *
 *   node dist/bench/realtime.js --gateway http://127.0.0.1:3001 --key KEY \
 *        [--api http://127.0.0.1:8000] [--clients 1000] [--rate 200] [--seconds 20] [--out FILE]
 *
 * With --api, events are document writes through the Python API, and latency is commit →
 * delivered: the event's `time` (stamped in the committing transaction) to its arrival at a
 * client, through outbox → relay → RabbitMQ → audit subscriber → realtime exchange → gateway.
 * Without --api, nothing is written and the script only measures connections and memory.
 * Gateway memory: process_resident_memory_bytes from its /metrics, before and after connecting. */
import { writeFileSync } from 'node:fs';
import WebSocket from 'ws';


function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && process.argv[i + 1]) return process.argv[i + 1];
  if (fallback === undefined) throw new Error(`--${name} is required`);
  return fallback;
}

async function rss(gateway: string): Promise<number> {
  const text = await (await fetch(`${gateway}/metrics`)).text();
  const m = /^process_resident_memory_bytes (\S+)$/m.exec(text);
  return m ? Number(m[1]) : NaN;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function main(): Promise<void> {
  const gateway = arg('gateway', 'http://127.0.0.1:3001');
  const key = arg('key');
  const api = arg('api', '');
  const clients = Number(arg('clients', '1000'));
  const rate = Number(arg('rate', '200'));
  const seconds = Number(arg('seconds', '20'));
  const out = arg('out', '');

  await sleep(500);
  const rssBefore = await rss(gateway);
  const latencies: number[] = [];
  let delivered = 0;
  let closedEarly = 0;
  const sockets: WebSocket[] = [];
  const started = Date.now();
  // Connect in batches so the handshakes do not time out on a small machine.
  for (let i = 0; i < clients; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, clients - i) }, () =>
        new Promise<void>((resolve, reject) => {
          const ws = new WebSocket(gateway.replace('http', 'ws') + '/v1/ws', { headers: { authorization: `Bearer ${key}` }, perMessageDeflate: false });
          ws.on('message', (data) => {
            const msg = JSON.parse(data.toString()) as { op?: string; time?: string };
            if (msg.op === 'subscribed') return resolve();
            if (msg.op === 'hello') return ws.send(JSON.stringify({ op: 'subscribe', types: ['document.*'] }));
            if (msg.op) return;
            delivered++;
            if (msg.time) latencies.push(Date.now() - Date.parse(msg.time));
          });
          ws.on('close', () => closedEarly++);
          ws.on('error', reject);
          sockets.push(ws);
        }),
      ),
    );
  }
  const connectSeconds = (Date.now() - started) / 1000;
  await sleep(2000);
  const rssConnected = await rss(gateway);
  const perConnection = (rssConnected - rssBefore) / clients;
  console.log(`connected ${clients} clients in ${connectSeconds.toFixed(1)} s; gateway RSS ${(rssBefore / 2 ** 20).toFixed(1)} → ${(rssConnected / 2 ** 20).toFixed(1)} MiB (${(perConnection / 1024).toFixed(1)} KiB per connection)`);

  let written = 0;
  let writeErrors = 0;
  let achievedRate = 0;
  if (api) {
    const total = rate * seconds;
    const t0 = Date.now();
    const inflight = new Set<Promise<void>>();
    for (let i = 0; i < total; i++) {
      const due = t0 + (i * 1000) / rate;
      const wait = due - Date.now();
      if (wait > 0) await sleep(wait);
      const p = fetch(`${api}/v1/documents`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ body: `bench ${i}` }),
      })
        .then((r) => (r.ok ? written++ : writeErrors++), () => writeErrors++)
        .then(() => void inflight.delete(p));
      inflight.add(p);
      if (inflight.size > 256) await Promise.race(inflight);
    }
    await Promise.all(inflight);
    achievedRate = written / ((Date.now() - t0) / 1000);
    // Wait for the tail of the deliveries.
    const want = written * clients;
    const deadline = Date.now() + 60_000;
    while (delivered < want && Date.now() < deadline) await sleep(250);
  }
  const rssEnd = await rss(gateway);
  for (const ws of sockets) ws.close();
  latencies.sort((a, b) => a - b);
  const result = {
    clients,
    target_rate: rate,
    seconds,
    writes: written,
    write_errors: writeErrors,
    achieved_write_rate: Math.round(achievedRate * 10) / 10,
    deliveries_expected: written * clients,
    deliveries: delivered,
    disconnected_during_run: closedEarly,
    latency_ms: { p50: percentile(latencies, 50), p90: percentile(latencies, 90), p99: percentile(latencies, 99), max: latencies[latencies.length - 1] ?? NaN },
    gateway_rss_mib: { before: rssBefore / 2 ** 20, connected: rssConnected / 2 ** 20, end: rssEnd / 2 ** 20 },
    gateway_bytes_per_connection: Math.round(perConnection),
  };
  console.log(JSON.stringify(result, null, 2));
  if (out) writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
  await sleep(200);
  process.exit(0);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
