/** The gateway's clients and services, built once from the settings (the composition root). */
import { Pool } from 'pg';
import type { Logger } from 'pino';
import { Authenticator, type Principal } from './auth';
import { CacheUnavailable, DocumentCache, RateLimiter, RedisLink } from './cache';
import { DocumentReader } from './documents';
import { createLogger } from './logging';
import { Metrics } from './metrics';
import { Problem } from './problems';
import { RealtimeConsumer } from './realtime/broker';
import { Hub } from './realtime/hub';
import type { Settings } from './settings';
import type { Subscriber } from './realtime/subscriber';

/** A live connection (subscribed or not), for heartbeats and shutdown. */
export interface Connection {
  heartbeat(): void;
  shutdown(detail: string): void;
  readonly sub?: Subscriber;
}

export class Services {
  readonly metrics = new Metrics();
  readonly db: Pool;
  readonly redis: RedisLink;
  readonly auth: Authenticator;
  readonly reader: DocumentReader;
  readonly limiter: RateLimiter;
  readonly hub: Hub;
  readonly consumer: RealtimeConsumer;
  readonly connections = new Set<Connection>();
  closing = false;
  private heartbeatTimer?: NodeJS.Timeout;

  constructor(readonly settings: Settings, readonly log: Logger = createLogger(settings.logLevel)) {
    this.db = new Pool({
      connectionString: settings.databaseUrl,
      max: settings.dbPool,
      connectionTimeoutMillis: 2000,
      idleTimeoutMillis: 30_000,
      application_name: `capstan-gateway ${settings.instanceId}`,
    });
    this.db.on('error', (err) => this.log.warn({ err: err.message }, 'idle database connection failed'));
    this.redis = new RedisLink(settings.cacheUrl);
    this.auth = new Authenticator(this.db, this.redis, settings.authCacheSeconds);
    this.reader = new DocumentReader(this.db, new DocumentCache(this.redis, settings.cacheTtlSeconds), this.metrics);
    this.limiter = new RateLimiter(this.redis, settings.rateLimitPerMinute, settings.rateLimitBurst);
    this.hub = new Hub(this.db, this.metrics, this.log, Math.max(1, settings.dbPool - 2));
    this.consumer = new RealtimeConsumer(
      settings.brokerUrl,
      settings.brokerNamespace,
      settings.instanceId,
      (ev) => this.hub.dispatch(ev),
      () => this.hub.catchUpAll('broker_reconnect'),
      this.metrics,
      this.log,
    );
  }

  async start(): Promise<void> {
    await this.redis.start();
    this.consumer.start();
    this.hub.startSweeping(this.settings.sweepSeconds);
    this.heartbeatTimer = setInterval(() => {
      for (const c of this.connections) c.heartbeat();
    }, this.settings.heartbeatSeconds * 1000);
    this.heartbeatTimer.unref();
  }

  /** Authenticate and charge the caller's rate limit (the API's budget: same script and key). */
  async principal(token: string | null): Promise<Principal> {
    const who = await this.auth.authenticate(token);
    try {
      const decision = await this.limiter.hit(who.keyId);
      if (!decision.allowed) {
        this.metrics.rateLimited.inc();
        throw new Problem(
          429,
          `rate limit of ${this.settings.rateLimitPerMinute}/min exceeded for this key`,
          { retry_after: decision.retryAfter },
          { 'retry-after': String(Math.max(1, Math.round(decision.retryAfter + 0.5))) },
        );
      }
    } catch (err) {
      if (!(err instanceof CacheUnavailable)) throw err; // fail open, as the API does
    }
    return who;
  }

  /** Close every client with a reconnect hint, then the clients of the servers. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    const hint = `the gateway is shutting down; reconnect in ${this.settings.reconnectMs} ms with your last seq`;
    for (const c of [...this.connections]) c.shutdown(hint);
    this.hub.stop();
    await this.consumer.stop();
    await this.redis.close();
    await this.db.end().catch(() => {});
  }
}
