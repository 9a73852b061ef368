/** GET /v1/documents/{id}: the Python API's read, through the same cache entries. */
import type { FastifyInstance } from 'fastify';
import { bearer } from '../auth';
import { Problem } from '../problems';

export async function documentRoutes(app: FastifyInstance): Promise<void> {
  const s = app.services;
  app.get<{ Params: { id: string } }>('/v1/documents/:id', async (request, reply) => {
    const who = await s.principal(bearer(request.headers, request.query), request.ip);
    const docId = request.params.id;
    const cacheControl = request.headers['cache-control'];
    const bypass = typeof cacheControl === 'string' && cacheControl.toLowerCase().includes('no-cache');
    const result = await s.reader.read(who.tenantId, docId, bypass);
    if (!result.loaded) throw new Problem(404, `document ${docId} does not exist`);
    return reply
      .header('etag', `"${result.loaded.version}"`)
      .header('x-cache', result.cache)
      .type('application/json')
      .send(result.loaded.payload);
  });
}
