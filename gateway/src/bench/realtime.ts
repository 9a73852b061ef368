/** Realtime benchmark: hold N WebSocket clients, produce R events/s, measure commit → delivered
 * latency, the gateway's memory per connection and the CPU each component spends per event.
 *
 *   node dist/bench/realtime.js --gateway http://127.0.0.1:3001 --key KEY \
 *        [--api http://127.0.0.1:8000 | --amqp URL --namespace NS --tenant ID]
 *        [--clients 1000] [--rate 200] [--seconds 20] [--warmup 3]
 *        [--threads 2] [--probe-every 10] [--pids api=1,relay=2,...] [--out FILE]
 *
 * Sources of events:
 * - --api: document writes through the Python API; latency is commit → delivered: the event's
 *   `time` (stamped in the committing transaction) to its arrival at a client, through
 *   outbox → relay → RabbitMQ → audit subscriber → realtime exchange → gateway.
 * - --amqp: audited-looking events published straight to `<namespace>.realtime`, as the audit
 *   subscriber does, with `time` stamped at publish: the gateway's fan-out alone (RabbitMQ →
 *   gateway → clients), without the Python write path competing for the same cores.
 * - neither: nothing is written; only connections and memory are measured.
 *
 * The clients live in --threads worker threads and the writer in one more, so a receiving loop
 * that falls behind cannot slow the writes down (the writer's own rate is reported). A warm-up
 * of --warmup seconds at the same rate comes first; its deliveries are counted, its latency
 * and CPU are not (`latency_by_second` shows the measured phase second by second). Every
 * client counts its deliveries; every --probe-every'th client also timestamps them (parsing
 * every message in every client would make the bench measure itself).
 * Gateway memory: process_resident_memory_bytes from its /metrics, before and after connecting.
 * CPU: utime + stime from /proc/<pid>/stat of each --pids process over the write phase
 * (`name=comm:postgres`: every process of that name, summed). */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import amqp from 'amqplib';
import { connect, type LeanSocket } from './wsclient';
import { BATCH_CONTENT_TYPE } from '../realtime/wire';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && process.argv[i + 1]) return process.argv[i + 1];
  if (fallback === undefined) throw new Error(`--${name} is required`);
  return fallback;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// --- receivers (worker thread) ----------------------------------------------------------------

interface ReceiverJob {
  role: 'receiver';
  gateway: string;
  key: string;
  clients: number;
  probeEvery: number;
}

interface ReceiverReport {
  delivered: number;
  closed: number;
  latencies?: number[];
  /** Each sample's event time (ms since the epoch), same order: which phase it belongs to. */
  times?: number[];
}

/** `"time": "...Z"` of an envelope without parsing it: the field the latency is measured from
 * (compact, or as PostgreSQL renders jsonb, which is what the relay and the audit pass on). */
const TIME = /"time":\s*"([^"]+)"/;
function eventTime(text: string): number | null {
  const found = TIME.exec(text);
  return found ? Date.parse(found[1]) : null;
}

const CONTROL = Buffer.from('{"op":');
const isControl = (data: Buffer) => data.subarray(0, CONTROL.length).equals(CONTROL);

async function receiver(job: ReceiverJob): Promise<void> {
  const port = parentPort!;
  const latencies: number[] = [];
  const times: number[] = [];
  let delivered = 0;
  let closed = 0;
  const url = job.gateway.replace('http', 'ws') + '/v1/ws';
  for (let i = 0; i < job.clients; i += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, job.clients - i) }, (_, j) =>
        new Promise<void>((resolve, reject) => {
          const probe = (i + j) % job.probeEvery === 0;
          let subscribed = false;
          const onText = (data: Buffer, client: LeanSocket) => {
            if (subscribed && !isControl(data)) {
              delivered++;
              if (probe) {
                const t = eventTime(data.toString());
                if (t !== null) {
                  latencies.push(Date.now() - t);
                  times.push(t);
                }
              }
              return;
            }
            const msg = JSON.parse(data.toString()) as { op?: string };
            if (msg.op === 'hello') client.sendText(JSON.stringify({ op: 'subscribe', types: ['document.*'] }));
            else if (msg.op === 'subscribed') {
              subscribed = true;
              resolve();
            }
          };
          connect(url, { authorization: `Bearer ${job.key}` }, onText, () => closed++).catch(reject);
        }),
      ),
    );
  }
  port.postMessage({ connected: job.clients });
  const progress = setInterval(() => port.postMessage({ delivered, closed } satisfies ReceiverReport), 500);
  port.on('message', (msg: { stop?: boolean }) => {
    if (!msg.stop) return;
    clearInterval(progress);
    port.postMessage({ delivered, closed, latencies, times } satisfies ReceiverReport);
  });
}

// --- writer (worker thread) -------------------------------------------------------------------

interface WriterJob {
  role: 'writer';
  api: string;
  key: string;
  rate: number;
  seconds: number;
}

interface PublisherJob {
  role: 'publisher';
  /** The seq of the first event (a warm-up came before: seqs must keep rising). */
  seqFrom: number;
  amqp: string;
  namespace: string;
  tenant: string;
  rate: number;
  seconds: number;
}

interface WriterReport {
  written: number;
  errors: Record<string, number>;
  seconds: number;
}

async function writer(job: WriterJob): Promise<void> {
  const total = job.rate * job.seconds;
  const errors: Record<string, number> = {};
  const fail = (why: string) => (errors[why] = (errors[why] ?? 0) + 1);
  let written = 0;
  const t0 = Date.now();
  const inflight = new Set<Promise<void>>();
  for (let i = 0; i < total; i++) {
    const wait = t0 + (i * 1000) / job.rate - Date.now();
    if (wait > 0) await sleep(wait);
    const p: Promise<void> = fetch(`${job.api}/v1/documents`, {
      method: 'POST',
      headers: { authorization: `Bearer ${job.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ body: `bench ${i}` }),
    })
      .then(
        async (r) => {
          await r.arrayBuffer();
          if (r.ok) written++;
          else fail(`HTTP ${r.status}`);
        },
        (err: Error) => fail((err.cause as Error | undefined)?.message ?? err.message),
      )
      .then(() => void inflight.delete(p));
    inflight.add(p);
    if (inflight.size >= 256) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  parentPort!.postMessage({ written, errors, seconds: (Date.now() - t0) / 1000 } satisfies WriterReport);
}

/** Publish `rate` events/s to the realtime exchange as the audit subscriber would (CloudEvents
 * envelope with tenantid and an increasing seq), with publisher confirms. */
async function publisher(job: PublisherJob): Promise<void> {
  const connection = await amqp.connect(job.amqp);
  const channel = await connection.createConfirmChannel();
  const exchange = `${job.namespace}.realtime`;
  await channel.assertExchange(exchange, 'topic', { durable: true });
  const total = job.rate * job.seconds;
  const errors: Record<string, number> = {};
  let written = 0;
  const t0 = Date.now();
  const confirms: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const wait = t0 + (i * 1000) / job.rate - Date.now();
    if (wait > 0) await sleep(wait);
    const id = randomUUID();
    const body = JSON.stringify({
      specversion: '1.0',
      id,
      source: '/capstan/bench',
      type: 'capstan.document.created',
      subject: `documents/${id}`,
      time: new Date().toISOString(),
      datacontenttype: 'application/json',
      data: { id, body: `bench ${i}`, version: 1 },
      tenantid: job.tenant,
      seq: job.seqFrom + i,
    });
    confirms.push(
      new Promise<void>((resolve) =>
        // As the audit subscriber publishes an event that arrived alone: a batch of one.
        channel.publish(exchange, 'audited', Buffer.from(body), { messageId: id, contentType: BATCH_CONTENT_TYPE, headers: { count: 1, seq: job.seqFrom + i } }, (err) => {
          if (err) errors['not confirmed'] = (errors['not confirmed'] ?? 0) + 1;
          else written++;
          resolve();
        }),
      ),
    );
  }
  await Promise.all(confirms);
  const seconds = (Date.now() - t0) / 1000;
  await connection.close();
  parentPort!.postMessage({ written, errors, seconds } satisfies WriterReport);
}

// --- coordinator (main thread) ----------------------------------------------------------------

interface Bucket {
  le: number;
  n: number;
}

/** The gateway's delivery lag histogram (event time → handed to the clients), cumulative. */
async function lagBuckets(gateway: string): Promise<Bucket[]> {
  const text = await (await fetch(`${gateway}/metrics`)).text();
  return [...text.matchAll(/^capstan_gateway_delivery_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$/gm)].map((m) => ({
    le: m[1] === '+Inf' ? Infinity : Number(m[1]),
    n: Number(m[2]),
  }));
}

/** Quantiles of the lag observed since `before` (a snapshot of the same histogram),
 * interpolated within their bucket as histogram_quantile does. */
function lagQuantiles(before: Bucket[], after: Bucket[], qs: number[]): Record<string, number> {
  const buckets = after.map((b, i) => ({ le: b.le, n: b.n - (before[i]?.n ?? 0) }));
  const total = buckets.at(-1)?.n ?? 0;
  const out: Record<string, number> = {};
  for (const q of qs) {
    const rank = q * total;
    let prev = { le: 0, n: 0 };
    for (const b of buckets) {
      if (b.n >= rank) {
        const le = Number.isFinite(b.le) ? b.le : prev.le;
        const within = b.n === prev.n ? 0 : (rank - prev.n) / (b.n - prev.n);
        out[`p${Math.round(q * 100)}`] = Math.round((prev.le + (le - prev.le) * within) * 1000);
        break;
      }
      prev = b;
    }
  }
  return out;
}

async function rss(gateway: string): Promise<number> {
  const text = await (await fetch(`${gateway}/metrics`)).text();
  const m = /^process_resident_memory_bytes (\S+)$/m.exec(text);
  return m ? Number(m[1]) : NaN;
}

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return NaN;
  }
}

/** A --pids entry: one pid, or `comm:NAME` for every process of that name (PostgreSQL's
 * backends come and go; each is counted from the start of the phase, or from its birth). */
type Measured = number | { comm: string };

function cpuOf(target: Measured): Map<number, number> {
  if (typeof target === 'number') return new Map([[target, cpuSeconds(target)]]);
  const found = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === target.comm) found.set(Number(entry), cpuSeconds(Number(entry)));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

function cpuSince(start: Map<number, number>, now: Map<number, number>): number {
  let total = 0;
  for (const [pid, cpu] of now) total += cpu - (start.get(pid) ?? 0);
  return total;
}

function spawn<T>(job: ReceiverJob | WriterJob | PublisherJob, onProgress?: (msg: T) => void): { worker: Worker; first: Promise<T> } {
  const worker = new Worker(__filename, { workerData: job });
  const first = new Promise<T>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  if (onProgress) worker.on('message', onProgress);
  return { worker, first };
}

async function main(): Promise<void> {
  const gateway = arg('gateway', 'http://127.0.0.1:3001');
  const key = arg('key');
  const api = arg('api', '');
  const broker = arg('amqp', '');
  const namespace = arg('namespace', '');
  const tenant = arg('tenant', '');
  const clients = Number(arg('clients', '1000'));
  const rate = Number(arg('rate', '200'));
  const seconds = Number(arg('seconds', '20'));
  const warmup = Number(arg('warmup', '3'));
  const threads = Math.max(1, Number(arg('threads', '2')));
  const probeEvery = Math.max(1, Number(arg('probe-every', '10')));
  const pids = Object.fromEntries(
    arg('pids', '')
      .split(',')
      .filter(Boolean)
      .map((kv) => kv.split('=') as [string, string])
      .map(([name, pid]): [string, Measured] => [name, pid.startsWith('comm:') ? { comm: pid.slice(5) } : Number(pid)]),
  );
  const out = arg('out', '');

  await sleep(500);
  const rssBefore = await rss(gateway);
  const started = Date.now();
  const latest: ReceiverReport[] = [];
  const receivers = Array.from({ length: threads }, (_, t) => {
    const share = Math.floor(clients / threads) + (t < clients % threads ? 1 : 0);
    latest.push({ delivered: 0, closed: 0 });
    return spawn<{ connected: number }>({ role: 'receiver', gateway, key, clients: share, probeEvery }, (msg) => {
      if ('delivered' in (msg as object)) latest[t] = msg as unknown as ReceiverReport;
    });
  });
  await Promise.all(receivers.map((r) => r.first));
  const connectSeconds = (Date.now() - started) / 1000;
  await sleep(2000);
  const rssConnected = await rss(gateway);
  const perConnection = (rssConnected - rssBefore) / clients;
  console.log(`connected ${clients} clients in ${connectSeconds.toFixed(1)} s; gateway RSS ${(rssBefore / 2 ** 20).toFixed(1)} → ${(rssConnected / 2 ** 20).toFixed(1)} MiB (${(perConnection / 1024).toFixed(1)} KiB per connection)`);

  const delivered = () => latest.reduce((n, r) => n + r.delivered, 0);
  let writes: WriterReport = { written: 0, errors: {}, seconds: 0 };
  const source = (secs: number, seqFrom = 1): WriterJob | PublisherJob =>
    api ? { role: 'writer', api, key, rate, seconds: secs } : { role: 'publisher', amqp: broker, namespace, tenant, rate, seconds: secs, seqFrom };
  // Warm-up at the same rate, not measured: pools, caches and code paths of every process are
  // warm when the measured phase starts (a cold start is a transient, not the steady state).
  let warmupWrites = 0;
  if ((api || broker) && warmup > 0) {
    const w = spawn<WriterReport>(source(warmup));
    warmupWrites = (await w.first).written;
    await w.worker.terminate();
    console.log(`warm-up: ${warmupWrites} writes in ${warmup} s`);
  }
  const cpuStart = Object.fromEntries(Object.entries(pids).map(([n, p]) => [n, cpuOf(p)]));
  const clientCpuStart = process.cpuUsage();
  const lagBefore = await lagBuckets(gateway);
  const t0 = Date.now();
  if (api || broker) {
    const ticker = setInterval(() => {
      const s = (Date.now() - t0) / 1000;
      console.log(`  ${s.toFixed(0).padStart(3)} s: ${delivered()} deliveries`);
    }, 2000);
    const w = spawn<WriterReport>(source(seconds, Math.ceil(rate * Math.max(0, warmup)) + 1)); // after every warm-up seq
    writes = await w.first;
    await w.worker.terminate();
    // The tail of the deliveries, bounded.
    const want = (warmupWrites + writes.written) * clients;
    const deadline = Date.now() + 60_000;
    while (delivered() < want && Date.now() < deadline) await sleep(250);
    clearInterval(ticker);
  }
  const wall = (Date.now() - t0) / 1000;
  const cpu: Record<string, number> = Object.fromEntries(Object.entries(pids).map(([n, p]) => [n, Math.round(cpuSince(cpuStart[n], cpuOf(p)) * 100) / 100]));
  const own = process.cpuUsage(clientCpuStart);
  cpu.bench_client_and_writer = Math.round((own.user + own.system) / 1e4) / 100;
  const rssEnd = await rss(gateway);
  const gatewayLag = lagQuantiles(lagBefore, await lagBuckets(gateway), [0.5, 0.9, 0.99]);

  const finals = await Promise.all(
    receivers.map(
      (r) =>
        new Promise<ReceiverReport>((resolve) => {
          r.worker.on('message', (msg: ReceiverReport) => msg.latencies && resolve(msg));
          r.worker.postMessage({ stop: true });
        }),
    ),
  );
  await Promise.all(receivers.map((r) => r.worker.terminate()));
  // Samples of the measured phase only (events committed from t0 on), also per second of it.
  const latencies: number[] = [];
  const bySecond: number[][] = [];
  for (const f of finals) {
    const times = f.times ?? [];
    (f.latencies ?? []).forEach((l, i) => {
      if (times[i] < t0) return; // a warm-up event
      latencies.push(l);
      (bySecond[Math.floor((times[i] - t0) / 1000)] ??= []).push(l);
    });
  }
  latencies.sort((a, b) => a - b);
  const total = finals.reduce((n, f) => n + f.delivered, 0);
  const result = {
    source: api ? 'api' : broker ? 'broker' : 'none',
    git: process.env.BENCH_GIT ?? null, // realtime.sh: the commit measured (-dirty: with changes)
    clients,
    target_rate: rate,
    seconds,
    writes: writes.written,
    write_errors: writes.errors,
    achieved_write_rate: Math.round((writes.written / Math.max(writes.seconds, 0.001)) * 10) / 10,
    warmup_seconds: warmup,
    warmup_writes: warmupWrites,
    deliveries_expected: (warmupWrites + writes.written) * clients,
    deliveries: total,
    deliveries_per_second: Math.round(total / wall),
    disconnected_during_run: finals.reduce((n, f) => n + f.closed, 0),
    latency_samples: latencies.length,
    latency_ms: { p50: percentile(latencies, 50), p90: percentile(latencies, 90), p99: percentile(latencies, 99), max: latencies[latencies.length - 1] ?? NaN },
    latency_by_second: Array.from(bySecond, (ls = []) => {
      const sorted = ls.sort((a, b) => a - b);
      return { samples: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1] ?? NaN };
    }),
    // Commit → the gateway hands the event to its clients (its histogram over the measured
    // phase, bucket-interpolated; a warm-up event handed over late counts too).
    gateway_lag_ms: gatewayLag,
    gateway_rss_mib: { before: rssBefore / 2 ** 20, connected: rssConnected / 2 ** 20, end: rssEnd / 2 ** 20 },
    gateway_bytes_per_connection: Math.round(perConnection),
    cpu_seconds: cpu,
    cpu_ms_per_event: Object.fromEntries(Object.entries(cpu).map(([n, c]) => [n, writes.written ? Math.round((c * 1000 * 100) / writes.written) / 100 : NaN])),
    wall_seconds: Math.round(wall * 10) / 10,
  };
  console.log(JSON.stringify(result, null, 2));
  if (out) writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
  process.exit(0);
}

if (isMainThread) {
  void main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else {
  const job = workerData as ReceiverJob | WriterJob | PublisherJob;
  void (job.role === 'writer' ? writer(job) : job.role === 'publisher' ? publisher(job) : receiver(job)).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
