/** /healthz (alive), /readyz (each dependency), /metrics (Prometheus). */
import type { FastifyInstance } from 'fastify';

const PROBE_TIMEOUT_MS = 2000;

interface Check {
  backend: string;
  required: boolean;
  status: 'up' | 'down';
  error?: string;
  latency_ms: number;
}

async function probe(fn: () => Promise<unknown>, backend: string, required: boolean): Promise<Check> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('timed out')), PROBE_TIMEOUT_MS))),
    ]);
    return { backend, required, status: 'up', latency_ms: round(performance.now() - started) };
  } catch (err) {
    return { backend, required, status: 'down', error: (err as Error).message || 'error', latency_ms: round(performance.now() - started) };
  } finally {
    clearTimeout(timer);
  }
}

const round = (ms: number) => Math.round(ms * 100) / 100;

export async function healthRoutes(app: FastifyInstance): Promise<void> {
  const s = app.services;
  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_request, reply) => {
    const [database, cache, broker] = await Promise.all([
      probe(() => s.db.query('SELECT 1'), 'postgresql', true),
      probe(() => s.redis.ping(), 'redis', false),
      probe(async () => {
        if (!s.consumer.connected) throw new Error('not consuming the realtime exchange (reconnecting)');
      }, 'rabbitmq', true),
    ]);
    const checks = { database, cache, broker };
    for (const [name, c] of Object.entries(checks)) s.metrics.dependencyUp.set({ dependency: name }, c.status === 'up' ? 1 : 0);
    // Reads survive a cache outage (degraded); realtime needs the database and the broker.
    const unready = s.closing || database.status === 'down' || broker.status === 'down';
    const status = unready ? 'unready' : cache.status === 'down' ? 'degraded' : 'ready';
    return reply.code(unready ? 503 : 200).send({ status, checks, connections: s.hub.size });
  });

  app.get('/metrics', async (_request, reply) => {
    reply.type(s.metrics.registry.contentType);
    return s.metrics.registry.metrics();
  });
}
