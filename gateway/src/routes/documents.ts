/** GET /v1/documents/{id}: the Python API's read, through the same cache entries. */
import type { FastifyInstance } from 'fastify';
import { bearer } from '../auth';
import { NotRendered } from '../documents';
import { Problem } from '../problems';

export async function documentRoutes(app: FastifyInstance): Promise<void> {
  const s = app.services;
  app.get<{ Params: { id: string } }>('/v1/documents/:id', async (request, reply) => {
    const who = await s.principal(bearer(request.headers, request.query), request.ip);
    const docId = request.params.id;
    const cacheControl = request.headers['cache-control'];
    const bypass = typeof cacheControl === 'string' && cacheControl.toLowerCase().includes('no-cache');
    let result;
    try {
      result = await s.reader.read(who.tenantId, docId, bypass);
    } catch (err) {
      if (!(err instanceof NotRendered)) throw err;
      request.log.error({ doc_id: docId }, 'document without a stored rendering');
      throw new Problem(500, err.message, { code: 'not-rendered' });
    }
    if (!result.loaded) throw new Problem(404, `document ${docId} does not exist`);
    reply.header('etag', etag(result.loaded.version)).header('x-cache', result.cache);
    if (noneMatch(request.headers['if-none-match'], result.loaded.version)) return reply.code(304).send();
    return reply.type('application/json').send(result.loaded.payload);
  });
}

export const etag = (version: number) => `"${version}"`;

/** True when `If-None-Match` names `version` (or is `*`): answer 304 Not Modified. Weak
 * comparison (RFC 9110 13.1.2), as the API's `none_match` (capstan.documents.router); a
 * malformed tag matches nothing. Shared vectors: tests/contract/vectors.json. */
export function noneMatch(value: string | undefined, version: number): boolean {
  if (value === undefined) return false;
  const current = etag(version);
  return value.split(',').some((raw) => {
    const tag = raw.trim();
    return tag === '*' || (tag.startsWith('W/') ? tag.slice(2) : tag) === current;
  });
}
