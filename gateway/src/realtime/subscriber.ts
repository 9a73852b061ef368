/** One client subscription, transport-agnostic: ordering, deduplication and back-pressure.
 *
 * `position` is the highest audit seq this client is known to be complete up to (sent, or
 * skipped because it did not match). Every delivery with seq <= position is a duplicate and is
 * dropped; so replayed and live streams can overlap freely and the client still sees each event
 * once, in seq order. While a catch-up from the audit log runs, live events are buffered
 * (bounded) and flushed after it. */
import type { Matcher } from './patterns';
import type { RtSignal } from './signals';

export interface RtEvent {
  seq: number;
  key: string; // routing key <entity>.<action>
  tenantId: string;
  json: string; // the CloudEvents envelope with "seq"
  time?: number; // event time (ms), for the delivery lag metric
  /** Wire forms, built once per event by the first sink that needs them (not per client). */
  wire?: { ws?: Buffer; sse?: string };
}

export type Transport = 'ws' | 'sse';

export interface Sink {
  readonly transport: Transport;
  /** Write one event; the sink serializes it for its wire format. */
  write(ev: RtEvent): void;
  /** Write one ephemeral signal (no seq: WS sends it as is, SSE as `event: signal`). */
  writeSignal(s: RtSignal): void;
  /** Bytes written but not yet handed to the kernel. */
  buffered(): number;
  /** Close the connection with a reason the client can read. */
  close(reason: CloseReason, detail: string): void;
  /** Hold writes in memory until `uncork`, so a burst of events leaves in one system call. */
  cork(): void;
  uncork(): void;
}

export type CloseReason = 'slow_consumer' | 'overflow' | 'shutdown' | 'client' | 'error' | 'heartbeat_timeout';

export interface Limits {
  bufferBytes: number;
  bufferEvents: number;
}

export interface Counters {
  sent(t: Transport): void;
  dropped(t: Transport, reason: 'duplicate' | 'overflow', n?: number): void;
}

export class Subscriber {
  position = 0;
  closed = false;
  /** > 0 while a catch-up is running; live events wait in `pending`. */
  private holding = 0;
  private pending: RtEvent[] = [];
  catchUpRequested = false;
  catchUpRunning = false;
  /** The tenant's newest seq seen at the previous sweep (see Hub.sweep). */
  sweepMark = 0;

  constructor(
    readonly tenantId: string,
    readonly matcher: Matcher,
    readonly sink: Sink,
    private readonly limits: Limits,
    private readonly counters: Counters,
  ) {}

  get transport(): Transport {
    return this.sink.transport;
  }

  hold(): void {
    this.holding++;
  }

  /** End a hold: deliver what was buffered meanwhile, in seq order. */
  release(): void {
    this.holding = Math.max(0, this.holding - 1);
    if (this.holding > 0) return;
    const buffered = this.pending.sort((a, b) => a.seq - b.seq);
    this.pending = [];
    for (const ev of buffered) {
      if (this.closed) return;
      this.deliver(ev);
    }
  }

  /** A live event from the broker. */
  offer(ev: RtEvent): void {
    if (this.closed) return;
    if (this.holding > 0) {
      this.pending.push(ev);
      if (this.pending.length > this.limits.bufferEvents) {
        this.counters.dropped(this.transport, 'overflow', this.pending.length);
        this.pending = [];
        this.shut('overflow', `more than ${this.limits.bufferEvents} events arrived while catching up; reconnect with your last seq`);
      }
      return;
    }
    this.deliver(ev);
  }

  /** Deliver in order: drop what is at or below the position, send what matches. */
  deliver(ev: RtEvent): boolean {
    if (this.closed) return false;
    if (ev.seq <= this.position) {
      this.counters.dropped(this.transport, 'duplicate');
      return false;
    }
    this.position = ev.seq;
    if (!this.matcher.matches(ev.key)) return false;
    this.sink.write(ev);
    this.counters.sent(this.transport);
    if (this.sink.buffered() > this.limits.bufferBytes) {
      this.counters.dropped(this.transport, 'overflow');
      this.shut('slow_consumer', `the client reads too slowly: more than ${this.limits.bufferBytes} bytes are waiting; reconnect with your last seq`);
    }
    return true;
  }

  /** An ephemeral signal: sent at once if it matches, outside the seq order. Dropped while a
   * catch-up holds the subscriber (the client has not seen `subscribed`/`ready` yet, and the
   * next tick follows soon). */
  signal(s: RtSignal): 'sent' | 'unmatched' | 'held' {
    if (this.closed || !this.matcher.matches(s.key)) return 'unmatched';
    if (this.holding > 0) return 'held';
    this.sink.writeSignal(s);
    if (this.sink.buffered() > this.limits.bufferBytes) {
      this.counters.dropped(this.transport, 'overflow');
      this.shut('slow_consumer', `the client reads too slowly: more than ${this.limits.bufferBytes} bytes are waiting; reconnect with your last seq`);
    }
    return 'sent';
  }

  /** Advance the position over events that were checked and did not match. */
  skipTo(seq: number): void {
    if (seq > this.position) this.position = seq;
  }

  shut(reason: CloseReason, detail: string): void {
    if (this.closed) return;
    this.closed = true;
    this.pending = [];
    this.sink.close(reason, detail);
  }
}
