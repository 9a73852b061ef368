/** The gateway's own queue on `<ns>.realtime`: exclusive and auto-deleted, one per gateway
 * process. Events published while the gateway is disconnected never reach it; the hub recovers
 * them from the audit log after every reconnect (Hub.catchUpAll), so nothing durable is needed. */
import amqp from 'amqplib';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics';
import type { RtEvent } from './subscriber';
import { readRealtime } from './wire';
import { brokerNodes } from './nodes';

export class RealtimeConsumer {
  private connection?: amqp.ChannelModel;
  private stopped = false;
  private attempt = 0;
  /** Every connection attempt goes to the next node of a cluster (one node: always that one). */
  private tries = 0;
  private readonly nodes: string[];
  private timer?: NodeJS.Timeout;
  connected = false;
  /** Resolves once the first connection is consuming. */
  readonly ready: Promise<void>;
  private markReady!: () => void;

  constructor(
    url: string,
    private readonly namespace: string,
    private readonly instanceId: string,
    private readonly onEvent: (ev: RtEvent) => void,
    private readonly onReconnected: () => void,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.ready = new Promise((r) => (this.markReady = r));
    this.nodes = brokerNodes(url);
  }

  get exchange(): string {
    return `${this.namespace}.realtime`;
  }

  get queue(): string {
    return `${this.namespace}.gateway.${this.instanceId}`;
  }

  start(): void {
    void this.connect(false);
  }

  private async connect(again: boolean): Promise<void> {
    if (this.stopped) return;
    try {
      const node = this.nodes[this.tries++ % this.nodes.length];
      const connection = await amqp.connect(node, { clientProperties: { connection_name: `capstan-gateway ${this.instanceId}` } });
      connection.on('error', (err) => this.log.warn({ err: err.message }, 'broker connection error'));
      connection.on('close', () => this.lost());
      const channel = await connection.createChannel();
      channel.on('error', (err) => this.log.warn({ err: err.message }, 'broker channel error'));
      await channel.assertExchange(this.exchange, 'topic', { durable: true });
      await channel.assertQueue(this.queue, { exclusive: true, autoDelete: true, durable: false });
      await channel.bindQueue(this.queue, this.exchange, '#');
      await channel.prefetch(1000);
      await channel.consume(this.queue, (msg) => msg && this.receive(msg), { noAck: true });
      this.connection = connection;
      this.connected = true;
      this.attempt = 0;
      this.metrics.brokerConnected.set(1);
      this.log.info({ queue: this.queue, exchange: this.exchange }, again ? 'broker reconnected; catching clients up' : 'consuming realtime events');
      this.markReady();
      if (again) this.onReconnected();
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'broker unavailable; retrying');
      this.schedule();
    }
  }

  private lost(): void {
    if (!this.connected) return;
    this.connected = false;
    this.connection = undefined;
    this.metrics.brokerConnected.set(0);
    if (!this.stopped) {
      this.log.warn('broker connection lost; reconnecting');
      this.schedule();
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    const delay = Math.min(5000, 100 * 2 ** this.attempt++) * (0.8 + Math.random() * 0.4);
    this.timer = setTimeout(() => void this.connect(true), delay);
  }

  private receive(msg: amqp.ConsumeMessage): void {
    const { events, malformed } = readRealtime({
      content: msg.content,
      contentType: msg.properties.contentType as string | undefined,
      routingKey: msg.fields.routingKey,
      headers: msg.properties.headers,
    });
    if (events.length > 0) this.metrics.received.inc({ outcome: 'ok' }, events.length);
    for (const ev of events) this.onEvent(ev);
    if (malformed.length > 0) {
      this.metrics.received.inc({ outcome: 'malformed' }, malformed.length);
      this.log.warn({ err: malformed[0], count: malformed.length, routingKey: msg.fields.routingKey }, 'malformed realtime message skipped');
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    const c = this.connection;
    this.connection = undefined;
    this.connected = false;
    if (c) await c.close().catch(() => {});
  }
}
