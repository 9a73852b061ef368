/** WebSocket /v1/ws. Client → server (JSON, at most CAPSTAN_GATEWAY_MAX_MESSAGE_BYTES):
 *   {"op":"subscribe","types":["document.*"],"after":123}   (after optional: resume cursor)
 *   {"op":"ping"}
 * Server → client: every event is its CloudEvents JSON with "seq"; control messages carry "op":
 *   hello, subscribed, pong, heartbeat, error, closing. */
import type { FastifyInstance } from 'fastify';
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { bearer } from '../auth';
import { Problem } from '../problems';
import { splitTypes } from '../realtime/patterns';
import { aheadOfFeed, BadSubscription, parseCursor, parsePatterns } from '../realtime/request';
import type { RtSignal } from '../realtime/signals';
import { Subscriber, type CloseReason, type RtEvent, type Sink } from '../realtime/subscriber';
import type { Connection } from '../services';
import { counters } from './stream';

/** Close codes: 1009 message too big (from ws), 1011 server error, 1012 shutdown (reconnect),
 * 4008 slow consumer / overflow (reconnect with your last seq). */
const CLOSE_CODES: Record<CloseReason, number> = {
  slow_consumer: 4008,
  overflow: 4008,
  shutdown: 1012,
  client: 1000,
  error: 1011,
  heartbeat_timeout: 1001,
};

class WsSink implements Sink {
  readonly transport = 'ws' as const;
  constructor(private readonly ws: WebSocket, private readonly reconnectMs: number, private readonly position: () => number) {}
  write(ev: RtEvent): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    const wire = (ev.wire ??= {});
    // One buffer per event for every client (ws frames it without copying: servers don't mask).
    this.ws.send((wire.ws ??= Buffer.from(ev.json)), { binary: false });
  }
  writeSignal(s: RtSignal): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    const wire = (s.wire ??= {});
    this.ws.send((wire.ws ??= Buffer.from(s.json)), { binary: false });
  }
  cork(): void {
    this.socket.cork();
  }
  uncork(): void {
    this.socket.uncork();
  }
  /** ws has no cork of its own; its sender writes through this socket (and nests corks). */
  private get socket(): Socket {
    return (this.ws as unknown as { _socket: Socket })._socket;
  }
  control(msg: Record<string, unknown>): void {
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(JSON.stringify(msg));
  }
  buffered(): number {
    return this.ws.bufferedAmount;
  }
  close(reason: CloseReason, detail: string): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    this.control({ op: 'closing', reason, detail, retry_ms: this.reconnectMs, position: this.position() });
    this.ws.close(CLOSE_CODES[reason], reason.replace('_', ' '));
    if (reason === 'slow_consumer' || reason === 'overflow') {
      // A slow reader may never drain the close frame: do not wait for it.
      setTimeout(() => this.ws.terminate(), 1000).unref();
    }
  }
}

export async function wsRoutes(app: FastifyInstance): Promise<void> {
  const s = app.services;
  app.get('/v1/ws', {
    websocket: true,
    preValidation: async (request) => {
      if (s.closing) throw new Problem(503, 'the gateway is shutting down; reconnect shortly', {}, { 'retry-after': '1' });
      (request as unknown as { principal: unknown }).principal = await s.principal(bearer(request.headers, request.query), request.ip);
    },
  }, (socket, request) => {
    const who = (request as unknown as { principal: { tenantId: string } }).principal;
    let sub: Subscriber | undefined;
    let subscribing = false;
    let alive = true;
    const sink = new WsSink(socket, s.settings.reconnectMs, () => sub?.position ?? 0);
    const conn: Connection = {
      get sub() {
        return sub;
      },
      heartbeat: () => {
        if (!alive) {
          s.metrics.disconnects.inc({ transport: 'ws', reason: 'heartbeat_timeout' });
          socket.terminate();
          return;
        }
        alive = false;
        socket.ping();
        sink.control({ op: 'heartbeat', position: sub?.position ?? null });
      },
      shutdown: (detail) => (sub ? sub.shut('shutdown', detail) : sink.close('shutdown', detail)),
    };
    s.connections.add(conn);
    s.metrics.connections.inc({ transport: 'ws' });
    socket.on('pong', () => (alive = true));
    socket.on('close', (code: number) => {
      s.connections.delete(conn);
      s.metrics.connections.dec({ transport: 'ws' });
      if (sub) {
        sub.closed = true;
        s.hub.remove(sub);
      }
      s.metrics.disconnects.inc({ transport: 'ws', reason: code === 1009 ? 'message_too_big' : code === 1012 ? 'shutdown' : code === 4008 ? 'slow_consumer' : 'closed' });
    });
    socket.on('error', (err) => request.log.debug({ err: err.message }, 'websocket error'));
    sink.control({ op: 'hello', heartbeat_ms: s.settings.heartbeatSeconds * 1000, max_message_bytes: s.settings.maxMessageBytes });

    const error = (code: string, detail: string, extra: Record<string, unknown> = {}) => sink.control({ op: 'error', code, detail, ...extra });

    socket.on('message', (data, isBinary) => {
      alive = true;
      let msg: Record<string, unknown>;
      try {
        if (isBinary) throw new Error('binary');
        const parsed = JSON.parse(data.toString()) as unknown;
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not an object');
        msg = parsed as Record<string, unknown>;
      } catch {
        return error('invalid-message', 'messages are JSON objects with an "op": subscribe or ping');
      }
      if (msg.op === 'ping') return sink.control({ op: 'pong' });
      if (msg.op !== 'subscribe') return error('unknown-op', `unknown op ${JSON.stringify(msg.op)}; expected subscribe or ping`);
      if (sub || subscribing) return error('already-subscribed', 'this connection already has a subscription; open another connection for other types');
      subscribing = true;
      void subscribe(msg).finally(() => (subscribing = false));
    });

    async function subscribe(msg: Record<string, unknown>): Promise<void> {
      let matcher;
      let cursor: number | null;
      try {
        const types = msg.types === undefined ? [] : Array.isArray(msg.types) && msg.types.every((t) => typeof t === 'string') ? (msg.types as string[]) : typeof msg.types === 'string' ? splitTypes(msg.types) : null;
        if (types === null) throw new BadSubscription('invalid-pattern', 'types', 'types must be a list of patterns such as ["document.*", "task.#"]');
        matcher = parsePatterns(types.flatMap((t) => splitTypes(t)), s.settings.maxPatterns);
        cursor = parseCursor(msg.after, 'after');
        if (cursor !== null) {
          const newest = await s.hub.newestSeq(who.tenantId);
          if (cursor > newest) throw aheadOfFeed('after', cursor, newest);
        }
      } catch (err) {
        if (err instanceof BadSubscription) {
          if (err.code === 'invalid-cursor') s.metrics.resumes.inc({ transport: 'ws', outcome: 'invalid' });
          return error(err.code, err.message, { field: err.field });
        }
        request.log.warn({ err: (err as Error).message }, 'subscribe failed');
        return error('unavailable', 'the event feed is unavailable; retry shortly');
      }
      if (cursor !== null) s.metrics.resumes.inc({ transport: 'ws', outcome: 'accepted' });
      if (socket.readyState !== socket.OPEN) return;
      const created = new Subscriber(who.tenantId, matcher, sink, { bufferBytes: s.settings.clientBufferBytes, bufferEvents: s.settings.clientBufferEvents }, counters(s));
      sub = created;
      try {
        await s.hub.start(created, cursor, (replayed) =>
          sink.control({ op: 'subscribed', types: created.matcher.patterns, after: cursor, position: created.position, replayed }),
        );
      } catch (err) {
        request.log.warn({ err: (err as Error).message }, 'subscription setup failed');
        created.shut('error', 'the event feed is unavailable; reconnect shortly');
      }
    }
  });
}
