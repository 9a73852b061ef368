/** The gateway's logger: the same JSON lines as the Python roles (capstan/observability/logging.py):
 * `time` (ISO 8601 UTC, milliseconds), `level` (DEBUG, INFO, WARNING, ERROR, CRITICAL), `logger`,
 * `message`, `request_id` (on request logs), then the call's own fields; on stderr. */
import pino, { type Logger } from 'pino';

const LEVELS: Record<string, string> = {
  trace: 'DEBUG',
  debug: 'DEBUG',
  info: 'INFO',
  warn: 'WARNING',
  error: 'ERROR',
  fatal: 'CRITICAL',
};

/** pino options giving Python's field names and values (exported for tests). */
export function loggerOptions(level: string, name = 'capstan.gateway'): pino.LoggerOptions {
  return {
    level,
    messageKey: 'message',
    base: { logger: name }, // no pid/hostname: the Python roles log neither
    timestamp: () => `,"time":"${new Date().toISOString()}"`,
    formatters: { level: (label) => ({ level: LEVELS[label] ?? label.toUpperCase() }) },
  };
}

export function createLogger(level: string, destination: pino.DestinationStream = pino.destination(2)): Logger {
  return pino(loggerOptions(level), destination);
}
