/** SSE: GET /v1/stream?types=document.*,task.*  — `id: <seq>` on every event; reconnecting with
 * `Last-Event-ID` (or `?after=<seq>`) replays what was missed, then continues live. */
import type { FastifyInstance } from 'fastify';
import type { ServerResponse } from 'node:http';
import { bearer } from '../auth';
import { Problem, invalid } from '../problems';
import { aheadOfFeed, BadSubscription, parseCursor, parsePatterns } from '../realtime/request';
import { splitTypes } from '../realtime/patterns';
import type { RtSignal } from '../realtime/signals';
import { Subscriber, type CloseReason, type Counters, type RtEvent, type Sink } from '../realtime/subscriber';
import type { Connection } from '../services';

class SseSink implements Sink {
  readonly transport = 'sse' as const;
  ended = false;
  constructor(private readonly res: ServerResponse, private readonly reconnectMs: number, private readonly position: () => number) {}

  write(ev: RtEvent): void {
    if (this.ended) return;
    const wire = (ev.wire ??= {});
    this.res.write((wire.sse ??= `id: ${ev.seq}\ndata: ${ev.json}\n\n`));
  }
  /** No `id:` line: the browser keeps the last seq as Last-Event-ID, so resume is unaffected. */
  writeSignal(s: RtSignal): void {
    if (this.ended) return;
    const wire = (s.wire ??= {});
    this.res.write((wire.sse ??= `event: signal\ndata: ${s.json}\n\n`));
  }
  cork(): void {
    this.res.cork();
  }
  uncork(): void {
    this.res.uncork();
  }
  raw(text: string): void {
    if (!this.ended) this.res.write(text);
  }
  buffered(): number {
    return this.res.writableLength;
  }
  close(reason: CloseReason, detail: string): void {
    if (this.ended) return;
    const body = { reason, detail, retry_ms: this.reconnectMs, position: this.position() };
    this.res.write(`event: close\ndata: ${JSON.stringify(body)}\n\n`);
    this.ended = true;
    this.res.end();
  }
}

export async function streamRoutes(app: FastifyInstance): Promise<void> {
  const s = app.services;
  app.get<{ Querystring: { types?: string | string[]; after?: string } }>('/v1/stream', async (request, reply) => {
    if (s.closing) throw new Problem(503, 'the gateway is shutting down; reconnect shortly', {}, { 'retry-after': '1' });
    const who = await s.principal(bearer(request.headers, request.query), request.ip);
    let cursor: number | null;
    let matcher;
    try {
      matcher = parsePatterns(splitTypes(request.query.types), s.settings.maxPatterns);
      const lastEventId = request.headers['last-event-id'];
      cursor = lastEventId !== undefined ? parseCursor(lastEventId, 'Last-Event-ID') : parseCursor(request.query.after, 'after');
      if (cursor !== null) {
        const newest = await s.hub.newestSeq(who.tenantId);
        if (cursor > newest) throw aheadOfFeed(lastEventId !== undefined ? 'Last-Event-ID' : 'after', cursor, newest);
      }
    } catch (err) {
      if (err instanceof BadSubscription) {
        if (err.code === 'invalid-cursor') s.metrics.resumes.inc({ transport: 'sse', outcome: 'invalid' });
        throw invalid(err.message, err.field);
      }
      throw err;
    }
    if (cursor !== null) s.metrics.resumes.inc({ transport: 'sse', outcome: 'accepted' });

    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-request-id': String(request.id),
    });
    res.write(`retry: ${s.settings.reconnectMs}\n\n`);
    let sub: Subscriber | undefined;
    const sink = new SseSink(res, s.settings.reconnectMs, () => sub?.position ?? 0);
    sub = new Subscriber(who.tenantId, matcher, sink, { bufferBytes: s.settings.clientBufferBytes, bufferEvents: s.settings.clientBufferEvents }, counters(s));
    const subscriber = sub;
    const conn: Connection = {
      sub: subscriber,
      heartbeat: () => sink.raw(`: heartbeat ${subscriber.position}\n\n`),
      shutdown: (detail) => subscriber.shut('shutdown', detail),
    };
    s.connections.add(conn);
    s.metrics.connections.inc({ transport: 'sse' });
    let done = false;
    const finish = (reason: string) => {
      if (done) return;
      done = true;
      subscriber.closed = true;
      sink.ended = true;
      s.hub.remove(subscriber);
      s.connections.delete(conn);
      s.metrics.connections.dec({ transport: 'sse' });
      s.metrics.disconnects.inc({ transport: 'sse', reason });
    };
    const origClose = sink.close.bind(sink);
    sink.close = (reason, detail) => {
      origClose(reason, detail);
      finish(reason);
    };
    res.on('close', () => finish('client'));
    try {
      await s.hub.start(subscriber, cursor, (replayed) => {
        const ready = { position: subscriber.position, replayed, types: subscriber.matcher.patterns };
        sink.raw(`event: ready\nid: ${subscriber.position}\ndata: ${JSON.stringify(ready)}\n\n`);
      });
    } catch (err) {
      request.log.warn({ err: (err as Error).message }, 'stream setup failed');
      subscriber.shut('error', 'the event feed is unavailable; reconnect shortly');
    }
  });
}

export function counters(s: FastifyInstance['services']): Counters {
  return {
    sent: (t) => s.metrics.sentCounts[t]++, // per delivery: a plain number, folded in at scrape time
    dropped: (t, reason, n = 1) => s.metrics.dropped.inc({ transport: t, reason }, n),
  };
}
