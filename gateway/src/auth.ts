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
// Revocation rows are read again this far back: commits land after their effective time.
const REVOCATION_MARGIN_MS = 30_000;
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

/** The token of an Authorization header by the API's rule (FastAPI's HTTPBearer): the scheme
 * precedes the first space and is `bearer` in any case; the rest, trimmed, is the token.
 * Shared vectors: tests/contract/vectors.json. */
export function headerToken(header: string): string | null {
  const space = header.indexOf(' ');
  if (space < 0) return null;
  const token = header.slice(space + 1).trim();
  return token && header.slice(0, space).toLowerCase() === 'bearer' ? token : null;
}

/** The bearer token of a request: the Authorization header, else `access_token` in the query
 * (EventSource and browser WebSockets cannot set headers; the gateway never logs query strings). */
export function bearer(headers: Record<string, unknown>, query: unknown): string | null {
  const header = headers['authorization'];
  if (typeof header === 'string') return headerToken(header);
  const q = (query as Record<string, unknown> | undefined)?.access_token;
  return typeof q === 'string' && q ? q : null;
}

export class Authenticator {
  private verified = new Map<string, [Principal, number]>();
  // Keys revoked lately (key id → when learned), checked on every use: an entry cached from a
  // read that raced the revocation still cannot be used (as the Python API does).
  private revoked = new Map<string, number>();
  private revocationsSince = new Date(Date.now() - REVOCATION_MARGIN_MS);
  private appliedRevocations = new Set<string>();

  constructor(private readonly db: Pool, private readonly redis: RedisLink, private readonly keyCacheSeconds: number) {}

  /** Apply the revocations that took effect since the last poll (auth_revocations, written by
   * the Python API and CLI): drop the keys from the cache. Sessions are deleted in Redis by
   * whoever revoked, so the gateway sees them gone at once. Returns the key ids. */
  async pollRevocations(): Promise<string[]> {
    // Bounded by the database's clock, the one that stamped effective_at: bounding it by this
    // process's clock skipped a revocation stamped "later" than it (clock skew, or the same
    // millisecond, which Date truncates), until the next poll.
    const { rows } = await this.db.query<{ at: Date; id: string | null; key_id: string | null }>(
      `SELECT t.at, r.id::text AS id, r.key_id
         FROM (SELECT now() AS at) t
         LEFT JOIN auth_revocations r ON r.effective_at >= $1 AND r.effective_at <= t.at`,
      [new Date(this.revocationsSince.getTime() - REVOCATION_MARGIN_MS)],
    );
    const found = rows.filter((r): r is { at: Date; id: string; key_id: string } => r.id !== null);
    const fresh = found.filter((r) => !this.appliedRevocations.has(r.id));
    const keys = [...new Set(fresh.map((r) => r.key_id))];
    this.forget(keys);
    this.appliedRevocations = new Set(found.map((r) => r.id));
    this.revocationsSince = rows[0].at;
    return keys;
  }

  /** Stop accepting `keyIds` now; remembered for twice the cache lifetime. */
  forget(keyIds: string[]): void {
    const now = Date.now();
    const horizon = now - 2 * Math.max(this.keyCacheSeconds, 1) * 1000;
    for (const [id, seen] of this.revoked) if (seen < horizon) this.revoked.delete(id);
    if (keyIds.length === 0) return;
    for (const id of keyIds) this.revoked.set(id, now);
    for (const [hash, [principal]] of this.verified) if (this.revoked.has(principal.keyId)) this.verified.delete(hash);
  }

  /** The principal behind a bearer token; throws a 401 (or 503) Problem. */
  async authenticate(token: string | null): Promise<Principal> {
    if (!token) throw unauthorized('send `Authorization: Bearer <api key or session token>`');
    if (token.length > 512) throw unauthorized('the bearer token is not a Capstan API key or session token');
    return token.startsWith(SESSION_PREFIX) ? this.fromSession(token) : this.fromApiKey(token);
  }

  private async fromApiKey(token: string): Promise<Principal> {
    const hash = digest(token);
    const cached = this.verified.get(hash);
    if (cached && cached[1] > Date.now() && !this.revoked.has(cached[0].keyId)) return cached[0];
    const keyId = apiKeyId(token);
    if (keyId === null) throw unauthorized('the bearer token is not a Capstan API key or session token');
    // Revoked, expired, or its tenant disabled: all refused (docs/contracts/auth.md).
    const { rows } = await this.db.query<{ tenant_id: string; key_hash: string; revoked: boolean; expires_ms: string | null }>(
      `SELECT k.tenant_id, k.key_hash,
              (k.revoked_at IS NOT NULL OR t.disabled_at IS NOT NULL OR k.expires_at <= now()) IS TRUE AS revoked,
              (extract(epoch FROM k.expires_at) * 1000)::bigint::text AS expires_ms
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1`,
      [keyId],
    );
    const row = rows[0];
    if (!row || row.revoked || this.revoked.has(keyId) || !sameHex(row.key_hash, hash)) {
      throw unauthorized('the API key is unknown or revoked');
    }
    const principal = { tenantId: row.tenant_id, keyId };
    if (this.keyCacheSeconds > 0) {
      if (this.verified.size > 10_000) this.verified.clear();
      const until = Date.now() + this.keyCacheSeconds * 1000;
      // A cached key never outlives its expiry.
      this.verified.set(hash, [principal, row.expires_ms === null ? until : Math.min(until, Number(row.expires_ms))]);
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
    if (this.revoked.has(data.key_id)) throw unauthorized('the session token is unknown, expired or revoked');
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
