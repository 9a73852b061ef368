/** The gateway's clients and services, built once from the settings (the composition root). */
import { Pool } from 'pg';
import { failoverClient, hostList } from './database';
import type { Logger } from 'pino';
import { Authenticator, type Principal } from './auth';
import { CacheUnavailable, DocumentCache, RateLimiter, RedisLink } from './cache';
import { DocumentReader } from './documents';
import { createLogger } from './logging';
import { Metrics } from './metrics';
import { Problem } from './problems';
import { RealtimeConsumer } from './realtime/broker';
import { Hub } from './realtime/hub';
import { SignalListener } from './realtime/signals';
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
  readonly failures: RateLimiter; // failed authentications per client address
  private blockedUntil = new Map<string, number>();
  readonly hub: Hub;
  readonly consumer: RealtimeConsumer;
  readonly signals: SignalListener;
  readonly connections = new Set<Connection>();
  closing = false;
  private heartbeatTimer?: NodeJS.Timeout;
  private revocationTimer?: NodeJS.Timeout;

  constructor(readonly settings: Settings, readonly log: Logger = createLogger(settings.logLevel)) {
    const hosts = hostList(settings.databaseUrl);
    this.db = new Pool({
      ...(hosts ? { Client: failoverClient(hosts) } : { connectionString: settings.databaseUrl }),
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
    this.failures = new RateLimiter(this.redis, settings.authFailuresPerMinute, settings.authFailuresBurst);
    this.hub = new Hub(this.db, this.metrics, this.log, Math.max(1, settings.dbPool - 2), settings.flushLingerMs);
    this.consumer = new RealtimeConsumer(
      settings.brokerUrl,
      settings.brokerNamespace,
      settings.instanceId,
      (ev) => this.hub.dispatch(ev),
      () => this.hub.catchUpAll('broker_reconnect'),
      this.metrics,
      this.log,
    );
    this.signals = new SignalListener(settings.cacheUrl, (sig) => this.hub.signal(sig), this.metrics, this.log);
  }

  async start(): Promise<void> {
    await this.redis.start();
    this.consumer.start();
    this.signals.start();
    this.hub.startSweeping(this.settings.sweepSeconds);
    this.heartbeatTimer = setInterval(() => {
      for (const c of this.connections) c.heartbeat();
    }, this.settings.heartbeatSeconds * 1000);
    this.heartbeatTimer.unref();
    // Every revocation reaches this instance's key cache within the poll (auth/revocations.py).
    this.revocationTimer = setInterval(() => {
      this.auth.pollRevocations().catch((err: Error) => this.log.warn({ err: err.message }, 'revocation poll failed'));
    }, this.settings.authRevocationPollSeconds * 1000);
    this.revocationTimer.unref();
    // And installs the durable cache generation in Redis (documents.ts, docs/contracts/cache.md).
    this.reader.watch(this.settings.cacheGenerationPollSeconds, (err) =>
      this.log.warn({ err: err.message }, 'cache generation poll failed'),
    );
  }

  /** Authenticate and charge the caller's rate limit (the API's budget: same script and key).
   * Failed authentications are limited per client address, as in the API: counted only on a
   * 401, then that address gets 429 for everything until the block ends (an in-process check). */
  async principal(token: string | null, address = 'unknown'): Promise<Principal> {
    const until = this.blockedUntil.get(address);
    if (until !== undefined) {
      const left = (until - Date.now()) / 1000;
      if (left > 0) throw tooManyFailures(left);
      this.blockedUntil.delete(address);
    }
    let who: Principal;
    try {
      who = await this.auth.authenticate(token);
    } catch (err) {
      if (err instanceof Problem && err.status === 401) await this.countFailure(address, err);
      throw err;
    }
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

  /** Charge one failed authentication to `address`; throws 429 once it is over its limit. */
  private async countFailure(address: string, original: Problem): Promise<void> {
    let decision;
    try {
      decision = await this.failures.hit(`authfail:${address}`);
    } catch (err) {
      if (err instanceof CacheUnavailable) throw original; // fail open
      throw err;
    }
    if (decision.allowed) return;
    if (this.blockedUntil.size > 10_000) this.blockedUntil.clear();
    this.blockedUntil.set(address, Date.now() + decision.retryAfter * 1000);
    throw tooManyFailures(decision.retryAfter);
  }

  /** Close every client with a reconnect hint, then the clients of the servers. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    if (this.revocationTimer) clearInterval(this.revocationTimer);
    this.reader.stop();
    const hint = `the gateway is shutting down; reconnect in ${this.settings.reconnectMs} ms with your last seq`;
    for (const c of [...this.connections]) c.shutdown(hint);
    this.hub.stop();
    await this.consumer.stop();
    await this.signals.stop();
    await this.redis.close();
    await this.db.end().catch(() => {});
  }
}

function tooManyFailures(retryAfter: number): Problem {
  return new Problem(
    429,
    'too many failed authentications from this address',
    { retry_after: retryAfter },
    { 'retry-after': String(Math.max(1, Math.round(retryAfter + 0.5))) },
  );
}
