/** Prometheus metrics (docs: gateway/README.md#metrics). HTTP and cache metrics reuse the API's
 * names and labels (docs/alerts.md), so one dashboard query covers both services by `job`. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();
  readonly connections: Gauge<'transport'>;
  readonly sent: Counter<'transport'>;
  /** Deliveries not yet added to `sent`: counting per delivery in prom-client (label hashing)
   * showed up in fan-out profiles, so the hot path bumps these and a scrape folds them in. */
  readonly sentCounts = { ws: 0, sse: 0 };
  readonly dropped: Counter<'transport' | 'reason'>;
  readonly replayed: Counter<'transport'>;
  readonly resumes: Counter<'transport' | 'outcome'>;
  readonly disconnects: Counter<'transport' | 'reason'>;
  readonly received: Counter<'outcome'>;
  readonly catchUps: Counter<'trigger'>;
  readonly signalsReceived: Counter<'outcome'>;
  readonly signalsSent: Counter<'transport'>;
  readonly signalsDropped: Counter<'transport' | 'reason'>;
  readonly brokerConnected: Gauge;
  readonly deliveryLag: Histogram;
  readonly httpRequests: Counter<'route' | 'method' | 'status'>;
  readonly httpDuration: Histogram<'route' | 'method'>;
  readonly httpInFlight: Gauge;
  readonly cacheRequests: Counter<'cache' | 'result'>;
  readonly cacheFills: Counter<'cache' | 'outcome'>;
  readonly generationSyncs: Counter<'cache' | 'outcome'>;
  readonly coalesced: Counter<'cache'>;
  readonly rateLimited: Counter;
  readonly dependencyUp: Gauge<'dependency'>;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.connections = new Gauge({ name: 'capstan_gateway_connections', help: 'open realtime connections', labelNames: ['transport'], registers });
    const sentCounts = this.sentCounts;
    this.sent = new Counter({
      name: 'capstan_gateway_messages_sent_total',
      help: 'events pushed to clients (live and replayed)',
      labelNames: ['transport'],
      registers,
      collect() {
        for (const t of ['ws', 'sse'] as const) {
          this.inc({ transport: t }, sentCounts[t]);
          sentCounts[t] = 0;
        }
      },
    });
    this.dropped = new Counter({ name: 'capstan_gateway_messages_dropped_total', help: 'events not pushed: duplicate (seq already sent) or overflow (client disconnected as too slow)', labelNames: ['transport', 'reason'], registers });
    this.replayed = new Counter({ name: 'capstan_gateway_events_replayed_total', help: 'events pushed from the audit log (resume and catch-up)', labelNames: ['transport'], registers });
    this.resumes = new Counter({ name: 'capstan_gateway_resume_requests_total', help: 'subscriptions that asked to resume from a cursor', labelNames: ['transport', 'outcome'], registers });
    this.disconnects = new Counter({ name: 'capstan_gateway_disconnects_total', help: 'connections closed, by reason', labelNames: ['transport', 'reason'], registers });
    this.received = new Counter({ name: 'capstan_gateway_events_received_total', help: 'events read from the realtime exchange (each line of a batch message counts): ok, malformed', labelNames: ['outcome'], registers });
    this.catchUps = new Counter({ name: 'capstan_gateway_catch_ups_total', help: 'audit-log catch-ups run for clients, by trigger', labelNames: ['trigger'], registers });
    this.signalsReceived = new Counter({ name: 'capstan_gateway_signals_received_total', help: 'ephemeral signals received from Redis Pub/Sub: ok, malformed', labelNames: ['outcome'], registers });
    this.signalsSent = new Counter({ name: 'capstan_gateway_signals_sent_total', help: 'ephemeral signals pushed to clients', labelNames: ['transport'], registers });
    this.signalsDropped = new Counter({ name: 'capstan_gateway_signals_dropped_total', help: 'ephemeral signals not pushed: catching_up (the client was being caught up from the audit log)', labelNames: ['transport', 'reason'], registers });
    this.brokerConnected = new Gauge({ name: 'capstan_gateway_broker_connected', help: '1 while consuming the realtime exchange', registers });
    this.deliveryLag = new Histogram({ name: 'capstan_gateway_delivery_lag_seconds', help: 'event time to live push (once per event, when it is handed to its clients)', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers });
    this.httpRequests = new Counter({ name: 'capstan_http_requests_total', help: 'requests answered', labelNames: ['route', 'method', 'status'], registers });
    this.httpDuration = new Histogram({ name: 'capstan_http_request_duration_seconds', help: 'time to answer', labelNames: ['route', 'method'], buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers });
    this.httpInFlight = new Gauge({ name: 'capstan_http_requests_in_flight', help: 'requests being answered', registers });
    this.cacheRequests = new Counter({ name: 'capstan_cache_requests_total', help: 'cache lookups', labelNames: ['cache', 'result'], registers });
    this.cacheFills = new Counter({ name: 'capstan_cache_fills_total', help: 'fills after a miss', labelNames: ['cache', 'outcome'], registers });
    this.generationSyncs = new Counter({ name: 'capstan_cache_generation_syncs_total', help: 'cache generation syncs: installed, failed (cache unreachable), lost (untrusted until the next install)', labelNames: ['cache', 'outcome'], registers });
    this.coalesced = new Counter({ name: 'capstan_cache_coalesced_reads_total', help: 'misses that waited for another read', labelNames: ['cache'], registers });
    this.rateLimited = new Counter({ name: 'capstan_rate_limited_total', help: '429 answers', registers });
    this.dependencyUp = new Gauge({ name: 'capstan_dependency_up', help: 'last readiness probe per dependency', labelNames: ['dependency'], registers });
  }
}
