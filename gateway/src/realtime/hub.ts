/** Fan-out of live events to subscribers, and gapless catch-up from the audit log.
 *
 * Resume protocol (docs/contracts/events.md, "Realtime gateway"):
 * 1. the subscriber is registered and *held*: live events for it are buffered from now on;
 * 2. `m` = the tenant's newest audit seq; every entry <= m is visible (the audit subscriber is
 *    ordered, so its seq is gap-safe);
 * 3. matching rows with cursor < seq are sent from the audit log in seq order, a page at a time;
 * 4. the position moves to max(last sent, m) and the buffered live events are flushed: those at
 *    or below the position are duplicates and dropped, the rest follow in order.
 * Anything committed after step 2 reaches the exchange after the registration in step 1, so it
 * arrives live: no gap, no duplicate. The same catch-up runs for every live subscriber after the
 * broker connection comes back (events published meanwhile never reached this gateway's queue),
 * and the sweep runs it for subscribers left behind by a lost follow-up publish. */
import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics';
import type { RtSignal } from './signals';
import { Subscriber, type RtEvent } from './subscriber';

const PAGE = 500;

interface AuditRow {
  seq: string;
  type: string;
  envelope: string;
}

const MAX_SEQ = 'SELECT coalesce(max(seq), 0) AS m FROM audit_log WHERE tenant_id = $1';
const PAGE_SQL = `
SELECT seq, type, envelope::text AS envelope FROM audit_log
 WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 AND ('.' || substr(type, 9)) ~ $4
 ORDER BY seq LIMIT $5`;

export type Trigger = 'resume' | 'broker_reconnect' | 'sweep';

class Semaphore {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

export class Hub {
  private byTenant = new Map<string, Set<Subscriber>>();
  private limiter: Semaphore;
  private sweepTimer?: NodeJS.Timeout;
  private newest = new Map<string, number>(); // tenant -> newest seq seen live
  private corked = new Set<Subscriber>();
  private flushScheduled = false;
  private lastFlush = -Infinity;

  /** `flushLingerMs`: the least time between two flushes of the corked sockets (see `schedule`). */
  constructor(
    private readonly db: Pool,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    concurrency: number,
    private readonly flushLingerMs = 0,
  ) {
    this.limiter = new Semaphore(Math.max(1, concurrency));
  }

  get size(): number {
    let n = 0;
    for (const s of this.byTenant.values()) n += s.size;
    return n;
  }

  *subscribers(): Iterable<Subscriber> {
    for (const set of this.byTenant.values()) yield* set;
  }

  /** Register `sub` and bring it up to date: from `after` (resume) or from now (live only).
   * Resolves with the number of events replayed. */
  async start(sub: Subscriber, after: number | null, onCaughtUp?: (replayed: number) => void): Promise<number> {
    let set = this.byTenant.get(sub.tenantId);
    if (!set) this.byTenant.set(sub.tenantId, (set = new Set()));
    set.add(sub);
    sub.hold();
    try {
      if (after === null) {
        const { rows } = await this.limiter.run(() => this.db.query<{ m: string }>(MAX_SEQ, [sub.tenantId]));
        sub.skipTo(Number(rows[0].m));
        onCaughtUp?.(0);
        return 0;
      }
      sub.position = after;
      const replayed = await this.replay(sub);
      onCaughtUp?.(replayed);
      return replayed;
    } finally {
      sub.release();
    }
  }

  /** The tenant's newest audit seq: a resume cursor above it cannot have come from this feed. */
  async newestSeq(tenantId: string): Promise<number> {
    const { rows } = await this.limiter.run(() => this.db.query<{ m: string }>(MAX_SEQ, [tenantId]));
    return Number(rows[0].m);
  }

  remove(sub: Subscriber): void {
    const set = this.byTenant.get(sub.tenantId);
    if (!set) return;
    set.delete(sub);
    if (set.size === 0) {
      this.byTenant.delete(sub.tenantId);
      this.newest.delete(sub.tenantId);
    }
  }

  /** A live event from the broker: to every subscriber of its tenant.
   *
   * Sockets written to stay corked until the next flush (`schedule`): when events arrive in a
   * burst, or faster than the linger, each client gets them in one write instead of one
   * system call per event, which is what fan-out time is mostly spent on. */
  dispatch(ev: RtEvent): void {
    if (ev.seq > (this.newest.get(ev.tenantId) ?? 0)) this.newest.set(ev.tenantId, ev.seq);
    const set = this.byTenant.get(ev.tenantId);
    if (!set) return;
    for (const sub of set) {
      if (!this.corked.has(sub)) {
        sub.sink.cork();
        this.corked.add(sub);
      }
      sub.offer(ev);
    }
    this.schedule();
    if (ev.time) this.metrics.deliveryLag.observe(Math.max(0, (Date.now() - ev.time) / 1000));
  }

  /** An ephemeral signal from Redis: to every matching subscriber of its tenant, corked like
   * events. Never buffered or replayed (docs/contracts/signals.md). */
  signal(s: RtSignal): void {
    const set = this.byTenant.get(s.tenantId);
    if (!set) return;
    for (const sub of set) {
      if (!this.corked.has(sub)) {
        sub.sink.cork();
        this.corked.add(sub);
      }
      const outcome = sub.signal(s);
      if (outcome === 'sent') this.metrics.signalsSent.inc({ transport: sub.transport });
      else if (outcome === 'held') this.metrics.signalsDropped.inc({ transport: sub.transport, reason: 'catching_up' });
    }
    this.schedule();
  }

  /** Flush at the end of this turn of the event loop, or, when the previous flush was less
   * than the linger ago, once it has passed: a quiet feed's event leaves at once, and a busy
   * one costs each client at most one write per linger (1,000 clients x 200 events/s were
   * 100,000+ `writev` calls a second, most of the gateway's CPU, and as many reads for the
   * clients). Like the relay's CAPSTAN_OUTBOX_LINGER_MS, it adds at most the linger. */
  private schedule(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    const wait = this.lastFlush + this.flushLingerMs - performance.now();
    if (wait <= 0) setImmediate(this.flush);
    else setTimeout(this.flush, wait);
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    this.lastFlush = performance.now();
    for (const sub of this.corked) sub.sink.uncork();
    this.corked.clear();
  };

  /** Catch `sub` up from its position through the audit log (held meanwhile). Coalesces: a
   * request during a run makes one more run after it, never two at once. */
  async catchUp(sub: Subscriber, trigger: Trigger): Promise<void> {
    sub.catchUpRequested = true;
    if (sub.catchUpRunning) return;
    sub.catchUpRunning = true;
    try {
      while (sub.catchUpRequested && !sub.closed) {
        sub.catchUpRequested = false;
        this.metrics.catchUps.inc({ trigger });
        sub.hold();
        try {
          await this.replay(sub);
        } catch (err) {
          this.log.warn({ err, tenant: sub.tenantId }, 'catch-up failed; the next sweep retries');
        } finally {
          sub.release();
        }
      }
    } finally {
      sub.catchUpRunning = false;
    }
  }

  catchUpAll(trigger: Trigger): void {
    for (const sub of this.subscribers()) void this.catchUp(sub, trigger);
  }

  /** Every `seconds`, catch up the subscribers that were already behind their tenant's newest
   * audit seq at the previous sweep (so in-flight events do not trigger needless reads). */
  startSweeping(seconds: number): void {
    if (seconds <= 0) return;
    this.sweepTimer = setInterval(() => void this.sweep().catch((err) => this.log.warn({ err }, 'sweep failed')), seconds * 1000);
    this.sweepTimer.unref();
  }

  async sweep(): Promise<void> {
    for (const [tenant, set] of [...this.byTenant]) {
      const { rows } = await this.limiter.run(() => this.db.query<{ m: string }>(MAX_SEQ, [tenant]));
      const newest = Number(rows[0].m);
      for (const sub of set) {
        if (sub.position < sub.sweepMark) void this.catchUp(sub, 'sweep');
        sub.sweepMark = newest;
      }
    }
  }

  stop(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
  }

  /** Steps 2-4 of the protocol; the caller holds `sub`. */
  private async replay(sub: Subscriber): Promise<number> {
    return this.limiter.run(async () => {
      const { rows: top } = await this.db.query<{ m: string }>(MAX_SEQ, [sub.tenantId]);
      const upTo = Number(top[0].m);
      let replayed = 0;
      let cursor = sub.position;
      while (!sub.closed && cursor < upTo) {
        const { rows } = await this.db.query<AuditRow>(PAGE_SQL, [sub.tenantId, cursor, upTo, sub.matcher.source, PAGE]);
        for (const row of rows) {
          const seq = Number(row.seq);
          const envelope = JSON.parse(row.envelope) as Record<string, unknown>;
          const ev: RtEvent = {
            seq,
            key: row.type.replace(/^capstan\./, ''),
            tenantId: sub.tenantId,
            json: JSON.stringify({ ...envelope, seq }),
          };
          if (sub.deliver(ev)) {
            replayed++;
            this.metrics.replayed.inc({ transport: sub.transport });
          }
          cursor = seq;
        }
        if (rows.length < PAGE) break;
        await drained(sub);
      }
      sub.skipTo(upTo);
      return replayed;
    });
  }
}

/** Wait (bounded) until the client's socket buffer is below half the limit before the next page. */
async function drained(sub: Subscriber): Promise<void> {
  for (let i = 0; i < 500 && !sub.closed && sub.sink.buffered() > 256 * 1024; i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
}
