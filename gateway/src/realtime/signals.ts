/** Ephemeral signals (docs/contracts/signals.md): Redis Pub/Sub, one channel per tenant,
 * `capstan:{tenant_id}:signals`, each message a CloudEvents-shaped JSON object marked
 * `"ephemeral": true` and without `seq` (task progress ticks from the workers).
 *
 * They are not part of the gapless resume stream: nothing is buffered, replayed or deduplicated.
 * A client that reconnects reads the latest progress from GET /v1/tasks/{id}. One PSUBSCRIBE per
 * gateway process; ioredis re-subscribes after a reconnect, and signals published meanwhile are
 * gone, which is what ephemeral means. */
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics';
import { sentinelOptions } from '../redisOptions';

export const SIGNAL_PATTERN = 'capstan:*:signals';
const CHANNEL = /^capstan:([^:]+):signals$/;
const TYPE_PREFIX = 'capstan.';

export interface RtSignal {
  key: string; // <entity>.<action>, matched against subscription patterns like an event's
  tenantId: string;
  json: string; // the message as published: forwarded as is
  wire?: { ws?: Buffer; sse?: string };
}

/** The signal in a message on `channel`, or null when it is not one (or claims another tenant). */
export function parseSignal(channel: string, message: string): RtSignal | null {
  const tenant = CHANNEL.exec(channel)?.[1];
  if (tenant === undefined) return null;
  let env: unknown;
  try {
    env = JSON.parse(message);
  } catch {
    return null;
  }
  if (typeof env !== 'object' || env === null || Array.isArray(env)) return null;
  const e = env as Record<string, unknown>;
  if (typeof e.type !== 'string' || !e.type.startsWith(TYPE_PREFIX)) return null;
  if (e.tenantid !== tenant || e.ephemeral !== true || 'seq' in e) return null;
  // One line, so it fits one SSE `data:` field whatever the publisher's formatting.
  const json = message.includes('\n') ? JSON.stringify(e) : message;
  return { key: e.type.slice(TYPE_PREFIX.length), tenantId: tenant, json };
}

/** A subscriber-mode Redis connection of its own (a connection in subscriber mode can run
 * nothing else, so it cannot be the cache's). */
export class SignalListener {
  private readonly client: Redis;
  private stopped = false;
  /** Resolves once the pattern subscription is active (tests wait for it). */
  ready: Promise<void> = Promise.resolve();

  constructor(url: string, onSignal: (s: RtSignal) => void, metrics: Metrics, private readonly log: Logger) {
    const options: RedisOptions = {
      lazyConnect: true, // nothing connects before start()
      // Queue the PSUBSCRIBE until Redis is there, however long that takes, and keep retrying.
      maxRetriesPerRequest: null,
      autoResubscribe: true,
      retryStrategy: (times) => Math.min(100 * times, 2000),
    };
    // A Sentinel URL, like the cache's: each reconnection asks the sentinels for the primary.
    const sentinel = sentinelOptions(url);
    this.client = sentinel ? new Redis({ ...options, ...sentinel }) : new Redis(url, options);
    this.client.on('error', (err: Error) => log.debug({ err: err.message }, 'signal connection error'));
    this.client.on('pmessage', (_pattern: string, channel: string, message: string) => {
      const signal = parseSignal(channel, message);
      if (signal === null) {
        metrics.signalsReceived.inc({ outcome: 'malformed' });
        log.warn({ channel }, 'malformed signal skipped');
        return;
      }
      metrics.signalsReceived.inc({ outcome: 'ok' });
      onSignal(signal);
    });
  }

  /** PSUBSCRIBE; queued until Redis is reachable, however long that takes. */
  start(): void {
    this.ready = this.client.psubscribe(SIGNAL_PATTERN).then(
      () => this.log.info({ pattern: SIGNAL_PATTERN }, 'listening for signals'),
      (err: Error) => {
        if (!this.stopped) this.log.warn({ err: err.message }, 'signal subscription failed');
      },
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.client.disconnect();
  }
}
