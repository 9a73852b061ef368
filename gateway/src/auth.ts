/** Who is calling: API keys (PostgreSQL) and session tokens (Redis), per docs/contracts/auth.md. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Pool } from 'pg';
import { CacheUnavailable, RedisLink, sessionKey } from './cache';
import { Problem, unauthorized, unavailable } from './problems';

export interface Principal {
  tenantId: string;
  keyId: string;
}

const API_KEY_PREFIX = 'cst_';
const SESSION_PREFIX = 'csts_';

export const digest = (secret: string) => createHash('sha256').update(secret, 'utf8').digest('hex');

/** The key id embedded in an API key, or null when `token` is not shaped like one. */
export function apiKeyId(token: string): string | null {
  if (!token.startsWith(API_KEY_PREFIX) || token.startsWith(SESSION_PREFIX)) return null;
  const rest = token.slice(API_KEY_PREFIX.length);
  const sep = rest.indexOf('_');
  if (sep < 0) return null;
  const keyId = rest.slice(0, sep);
  if (keyId.length !== 16 || sep === rest.length - 1) return null;
  return keyId;
}

/** The bearer token of a request: the Authorization header, else `access_token` in the query
 * (EventSource and browser WebSockets cannot set headers; the gateway never logs query strings). */
export function bearer(headers: Record<string, unknown>, query: unknown): string | null {
  const header = headers['authorization'];
  if (typeof header === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return m ? m[1] : null;
  }
  const q = (query as Record<string, unknown> | undefined)?.access_token;
  return typeof q === 'string' && q ? q : null;
}

export class Authenticator {
  private verified = new Map<string, [Principal, number]>();

  constructor(private readonly db: Pool, private readonly redis: RedisLink, private readonly keyCacheSeconds: number) {}

  /** The principal behind a bearer token; throws a 401 (or 503) Problem. */
  async authenticate(token: string | null): Promise<Principal> {
    if (!token) throw unauthorized('send `Authorization: Bearer <api key or session token>`');
    if (token.length > 512) throw unauthorized('the bearer token is not a Capstan API key or session token');
    return token.startsWith(SESSION_PREFIX) ? this.fromSession(token) : this.fromApiKey(token);
  }

  private async fromApiKey(token: string): Promise<Principal> {
    const hash = digest(token);
    const cached = this.verified.get(hash);
    if (cached && cached[1] > Date.now()) return cached[0];
    const keyId = apiKeyId(token);
    if (keyId === null) throw unauthorized('the bearer token is not a Capstan API key or session token');
    const { rows } = await this.db.query<{ tenant_id: string; key_hash: string; revoked: boolean }>(
      'SELECT tenant_id, key_hash, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE id = $1',
      [keyId],
    );
    const row = rows[0];
    if (!row || row.revoked || !sameHex(row.key_hash, hash)) throw unauthorized('the API key is unknown or revoked');
    const principal = { tenantId: row.tenant_id, keyId };
    if (this.keyCacheSeconds > 0) {
      if (this.verified.size > 10_000) this.verified.clear();
      this.verified.set(hash, [principal, Date.now() + this.keyCacheSeconds * 1000]);
    }
    return principal;
  }

  private async fromSession(token: string): Promise<Principal> {
    let raw: string | null;
    try {
      raw = await this.redis.call((c) => c.get(sessionKey(digest(token))));
    } catch (err) {
      if (err instanceof CacheUnavailable) throw unavailable('the session store is unavailable; use an API key');
      throw err;
    }
    if (raw === null) throw unauthorized('the session token is unknown, expired or revoked');
    const data = JSON.parse(raw) as { tenant_id: string; key_id: string };
    return { tenantId: data.tenant_id, keyId: data.key_id };
  }
}

/** Constant-time comparison of two hex digests. */
function sameHex(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

export function isProblem(err: unknown): err is Problem {
  return err instanceof Problem;
}
