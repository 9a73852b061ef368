/** Settings from the environment, validated by a JSON schema at startup (fastify/demo habit).
 * Names shared with the Python roles keep their Python names (CAPSTAN_DATABASE_URL, ...). */
import envSchema from 'env-schema';
import { randomBytes } from 'node:crypto';

const schema = {
  type: 'object',
  required: ['CAPSTAN_DATABASE_URL', 'CAPSTAN_CACHE_URL', 'CAPSTAN_BROKER_URL'],
  properties: {
    CAPSTAN_DATABASE_URL: { type: 'string', pattern: '^postgres(ql)?(\\+[a-z0-9]+)?://' },
    CAPSTAN_CACHE_URL: { type: 'string', pattern: '^rediss?(\\+sentinel)?://' },
    CAPSTAN_BROKER_URL: { type: 'string', pattern: '^amqps?://' },
    CAPSTAN_BROKER_NAMESPACE: { type: 'string', pattern: '^[a-z0-9][a-z0-9_.\\-]*$', default: 'capstan' },
    CAPSTAN_CACHE_TTL_SECONDS: { type: 'integer', minimum: 1, default: 300 },
    CAPSTAN_CACHE_GENERATION_POLL_SECONDS: { type: 'number', exclusiveMinimum: 0, default: 1 },
    CAPSTAN_RATE_LIMIT_PER_MINUTE: { type: 'integer', minimum: 1, default: 1200 },
    CAPSTAN_RATE_LIMIT_BURST: { type: 'integer', minimum: 1, default: 200 },
    CAPSTAN_AUTH_CACHE_SECONDS: { type: 'number', minimum: 0, default: 30 },
    CAPSTAN_AUTH_REVOCATION_POLL_SECONDS: { type: 'number', exclusiveMinimum: 0, default: 2 },
    CAPSTAN_AUTH_FAILURES_PER_MINUTE: { type: 'integer', minimum: 1, default: 30 },
    CAPSTAN_AUTH_FAILURES_BURST: { type: 'integer', minimum: 1, default: 10 },
    CAPSTAN_GATEWAY_HOST: { type: 'string', default: '127.0.0.1' },
    CAPSTAN_GATEWAY_PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 3001 },
    CAPSTAN_GATEWAY_INSTANCE: { type: 'string', pattern: '^[A-Za-z0-9_.\\-]{1,64}$' },
    CAPSTAN_GATEWAY_HEARTBEAT_SECONDS: { type: 'number', exclusiveMinimum: 0, default: 15 },
    CAPSTAN_GATEWAY_SWEEP_SECONDS: { type: 'number', minimum: 0, default: 30 },
    CAPSTAN_GATEWAY_CLIENT_BUFFER_BYTES: { type: 'integer', minimum: 1024, default: 1048576 },
    CAPSTAN_GATEWAY_CLIENT_BUFFER_EVENTS: { type: 'integer', minimum: 1, default: 10000 },
    CAPSTAN_GATEWAY_FLUSH_LINGER_MS: { type: 'number', minimum: 0, maximum: 1000, default: 10 },
    CAPSTAN_GATEWAY_MAX_MESSAGE_BYTES: { type: 'integer', minimum: 64, default: 4096 },
    CAPSTAN_GATEWAY_MAX_PATTERNS: { type: 'integer', minimum: 1, default: 32 },
    CAPSTAN_GATEWAY_RECONNECT_MS: { type: 'integer', minimum: 0, default: 2000 },
    CAPSTAN_GATEWAY_SHUTDOWN_SECONDS: { type: 'number', minimum: 0, default: 10 },
    CAPSTAN_GATEWAY_DB_POOL: { type: 'integer', minimum: 1, default: 10 },
    // Shared with Python (DEBUG, INFO, WARNING, ERROR); pino's names are accepted too.
    CAPSTAN_LOG_LEVEL: { type: 'string', pattern: '^([Dd][Ee][Bb][Uu][Gg]|[Ii][Nn][Ff][Oo]|[Ww][Aa][Rr][Nn]([Ii][Nn][Gg])?|[Ee][Rr][Rr][Oo][Rr]|fatal|trace|silent)$', default: 'INFO' },
  },
} as const;

export interface Settings {
  databaseUrl: string;
  cacheUrl: string;
  brokerUrl: string;
  brokerNamespace: string;
  cacheTtlSeconds: number;
  cacheGenerationPollSeconds: number;
  rateLimitPerMinute: number;
  rateLimitBurst: number;
  authCacheSeconds: number;
  authRevocationPollSeconds: number;
  authFailuresPerMinute: number;
  authFailuresBurst: number;
  host: string;
  port: number;
  instanceId: string;
  heartbeatSeconds: number;
  sweepSeconds: number;
  clientBufferBytes: number;
  clientBufferEvents: number;
  flushLingerMs: number;
  maxMessageBytes: number;
  maxPatterns: number;
  reconnectMs: number;
  shutdownSeconds: number;
  dbPool: number;
  logLevel: string;
}

/** The settings from `env` (default: process.env); throws a clear error naming the variable. */
export function loadSettings(env: NodeJS.ProcessEnv = process.env): Settings {
  const e = envSchema<Record<string, any>>({ schema, data: { ...env }, dotenv: false });
  return {
    // SQLAlchemy-style driver suffixes (postgresql+asyncpg://) are accepted and stripped.
    databaseUrl: String(e.CAPSTAN_DATABASE_URL).replace(/^postgres(ql)?\+[a-z0-9]+:/, 'postgresql:'),
    cacheUrl: e.CAPSTAN_CACHE_URL,
    brokerUrl: e.CAPSTAN_BROKER_URL,
    brokerNamespace: e.CAPSTAN_BROKER_NAMESPACE,
    cacheTtlSeconds: e.CAPSTAN_CACHE_TTL_SECONDS,
    cacheGenerationPollSeconds: e.CAPSTAN_CACHE_GENERATION_POLL_SECONDS,
    rateLimitPerMinute: e.CAPSTAN_RATE_LIMIT_PER_MINUTE,
    rateLimitBurst: e.CAPSTAN_RATE_LIMIT_BURST,
    authCacheSeconds: e.CAPSTAN_AUTH_CACHE_SECONDS,
    authRevocationPollSeconds: e.CAPSTAN_AUTH_REVOCATION_POLL_SECONDS,
    authFailuresPerMinute: e.CAPSTAN_AUTH_FAILURES_PER_MINUTE,
    authFailuresBurst: e.CAPSTAN_AUTH_FAILURES_BURST,
    host: e.CAPSTAN_GATEWAY_HOST,
    port: e.CAPSTAN_GATEWAY_PORT,
    instanceId: e.CAPSTAN_GATEWAY_INSTANCE ?? randomBytes(6).toString('hex'),
    heartbeatSeconds: e.CAPSTAN_GATEWAY_HEARTBEAT_SECONDS,
    sweepSeconds: e.CAPSTAN_GATEWAY_SWEEP_SECONDS,
    clientBufferBytes: e.CAPSTAN_GATEWAY_CLIENT_BUFFER_BYTES,
    clientBufferEvents: e.CAPSTAN_GATEWAY_CLIENT_BUFFER_EVENTS,
    flushLingerMs: e.CAPSTAN_GATEWAY_FLUSH_LINGER_MS,
    maxMessageBytes: e.CAPSTAN_GATEWAY_MAX_MESSAGE_BYTES,
    maxPatterns: e.CAPSTAN_GATEWAY_MAX_PATTERNS,
    reconnectMs: e.CAPSTAN_GATEWAY_RECONNECT_MS,
    shutdownSeconds: e.CAPSTAN_GATEWAY_SHUTDOWN_SECONDS,
    dbPool: e.CAPSTAN_GATEWAY_DB_POOL,
    logLevel: String(e.CAPSTAN_LOG_LEVEL).toLowerCase().replace('warning', 'warn'),
  };
}
