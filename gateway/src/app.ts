/** The Fastify application: plugins in order (fastify/demo habit): the services, then hooks
 * (request ids, metrics, problem+json errors), then routes. `server.ts` only listens. */
import websocket from '@fastify/websocket';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { randomUUID } from 'node:crypto';
import { Problem, sendProblem } from './problems';
import { documentRoutes } from './routes/documents';
import { healthRoutes } from './routes/health';
import { streamRoutes } from './routes/stream';
import { wsRoutes } from './routes/ws';
import type { Services } from './services';

declare module 'fastify' {
  interface FastifyInstance {
    services: Services;
  }
  interface FastifyRequest {
    startedAt?: bigint;
  }
}

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const STREAMING = new Set(['/v1/stream', '/v1/ws']);

export function isDatabaseDown(err: unknown): boolean {
  const e = err as { code?: string; message?: string };
  if (typeof e?.code === 'string' && (/^E[A-Z]/.test(e.code) || e.code.startsWith('08') || e.code.startsWith('57P'))) return true;
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|connect ECONNREFUSED/.test(e?.message ?? '');
}

export async function buildApp(services: Services): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: services.log as unknown as FastifyBaseLogger,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && SAFE_REQUEST_ID.test(given) ? given : randomUUID().replace(/-/g, '');
    },
    // Fastify's request log has the full URL; ours (onResponse) never logs query strings.
    logController: new LogController({ requestIdLogLabel: 'request_id', disableRequestLogging: true }),
    bodyLimit: services.settings.maxMessageBytes,
    forceCloseConnections: true,
  });
  app.decorate('services', services);

  // Never log query strings: they may carry `access_token`.
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', String(request.id));
    const route = request.routeOptions.url;
    if (route && STREAMING.has(route)) return;
    request.startedAt = process.hrtime.bigint();
    services.metrics.httpInFlight.inc();
  });
  app.addHook('onResponse', async (request, reply) => {
    request.log.info(
      { method: request.method, path: request.url.split('?')[0], status: reply.statusCode, ms: Math.round(reply.elapsedTime * 100) / 100 },
      'request completed',
    );
    if (request.startedAt === undefined) return;
    services.metrics.httpInFlight.dec();
    const route = request.routeOptions.url ?? 'unmatched';
    const seconds = Number(process.hrtime.bigint() - request.startedAt) / 1e9;
    services.metrics.httpRequests.inc({ route, method: request.method, status: String(reply.statusCode) });
    services.metrics.httpDuration.observe({ route, method: request.method }, seconds);
  });

  app.setErrorHandler(async (err, request, reply) => {
    if (err instanceof Problem) return sendProblem(request, reply, err);
    const e = err as { validation?: unknown; statusCode?: number; message: string };
    if (e.validation) return sendProblem(request, reply, new Problem(422, e.message));
    if (isDatabaseDown(err)) {
      request.log.warn({ err: e.message }, 'database unavailable');
      return sendProblem(request, reply, new Problem(503, 'the database is unavailable; retry shortly', {}, { 'retry-after': '1' }));
    }
    if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) return sendProblem(request, reply, new Problem(e.statusCode, e.message));
    request.log.error({ err }, 'unhandled error');
    return sendProblem(request, reply, new Problem(500, 'an unexpected error occurred'));
  });
  app.setNotFoundHandler(async (request, reply) =>
    sendProblem(request, reply, new Problem(404, `no route for ${request.method} ${request.url.split('?')[0]}`)),
  );

  await app.register(websocket, {
    options: { maxPayload: services.settings.maxMessageBytes, perMessageDeflate: false },
  });
  await app.register(healthRoutes);
  await app.register(documentRoutes);
  await app.register(streamRoutes);
  await app.register(wsRoutes);
  return app;
}
