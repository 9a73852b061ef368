/** RFC 9457 problem+json, the same shape as the Python API (src/capstan/api/problems.py). */
import type { FastifyReply, FastifyRequest } from 'fastify';

export const PROBLEM_JSON = 'application/problem+json';
const TYPE_BASE = 'https://capstan.dev/problems/';

const KINDS: Record<number, [string, string]> = {
  400: ['Bad Request', 'bad-request'],
  401: ['Unauthorized', 'unauthorized'],
  404: ['Not Found', 'not-found'],
  405: ['Method Not Allowed', 'method-not-allowed'],
  413: ['Content Too Large', 'too-large'],
  422: ['Unprocessable Content', 'invalid-input'],
  429: ['Too Many Requests', 'rate-limited'],
  500: ['Internal Server Error', 'internal'],
  503: ['Service Unavailable', 'unavailable'],
};

/** An error a handler throws to answer with a problem. */
export class Problem extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
    readonly extensions: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(detail);
  }
}

export function problemBody(status: number, detail: string, requestId?: string, extensions: Record<string, unknown> = {}) {
  const [title, slug] = KINDS[status] ?? ['Error', 'http-error'];
  const body: Record<string, unknown> = { type: TYPE_BASE + slug, title, status, detail };
  if (requestId) body.request_id = requestId;
  return { ...body, ...extensions };
}

export function sendProblem(request: FastifyRequest, reply: FastifyReply, p: Problem): FastifyReply {
  const headers: Record<string, string> = { ...p.headers };
  if (p.status === 401) headers['www-authenticate'] = 'Bearer realm="capstan"';
  return reply
    .code(p.status)
    .headers(headers)
    .type(PROBLEM_JSON)
    .send(Buffer.from(JSON.stringify(problemBody(p.status, p.detail, String(request.id), p.extensions))));
}

export const unauthorized = (detail: string) => new Problem(401, detail);
export const unavailable = (detail: string) => new Problem(503, detail, {}, { 'retry-after': '1' });
export const invalid = (detail: string, field?: string) =>
  new Problem(422, detail, field ? { field } : {});
