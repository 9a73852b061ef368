/** Reading `<ns>.realtime` messages (docs/contracts/events.md, "Broker names").
 *
 * The audit subscriber publishes one message per audit batch: `application/x-ndjson`, one
 * audited envelope (with its "seq") per line, in seq order (capstan/events/realtime.py).
 * Earlier versions published one envelope per message, routed by its `<entity>.<action>`;
 * both are read, so a gateway outlives an audit subscriber of either kind. */
import type { RtEvent } from './subscriber';

export const BATCH_CONTENT_TYPE = 'application/x-ndjson';
const TYPE_PREFIX = 'capstan.';

export interface Incoming {
  content: Buffer;
  contentType?: string;
  routingKey: string;
  headers?: Record<string, unknown>;
}

export interface Read {
  events: RtEvent[];
  /** Reasons for the lines (or the message) that could not be read; the rest still are. */
  malformed: string[];
}

interface Envelope {
  type?: unknown;
  tenantid?: unknown;
  seq?: unknown;
  time?: unknown;
}

/** The events of one message, in order; a bad line is skipped, not the whole batch. */
export function readRealtime(msg: Incoming): Read {
  const read: Read = { events: [], malformed: [] };
  if (msg.contentType === BATCH_CONTENT_TYPE) {
    for (const line of msg.content.toString('utf8').split('\n')) {
      if (line.trim() === '') continue;
      take(read, () => audited(line, null, undefined));
    }
  } else {
    take(read, () => audited(msg.content.toString('utf8'), msg.routingKey, msg.headers));
  }
  return read;
}

function take(read: Read, parse: () => RtEvent): void {
  try {
    read.events.push(parse());
  } catch (err) {
    read.malformed.push((err as Error).message);
  }
}

/** One envelope's text. A single-envelope message may carry seq and tenant in its headers
 * and names its key by its routing key; a batch line has them all in the envelope. */
function audited(json: string, routingKey: string | null, headers: Record<string, unknown> | undefined): RtEvent {
  const env = JSON.parse(json) as Envelope;
  if (env === null || typeof env !== 'object' || Array.isArray(env)) throw new Error('not a JSON object');
  const seq = Number(env.seq ?? headers?.seq);
  const tenantId = env.tenantid ?? headers?.tenantid;
  if (!Number.isSafeInteger(seq) || seq <= 0 || typeof tenantId !== 'string') throw new Error('no seq or tenantid');
  let key = routingKey;
  if (key === null) {
    if (typeof env.type !== 'string' || !env.type.startsWith(TYPE_PREFIX)) throw new Error('no capstan. type');
    key = env.type.slice(TYPE_PREFIX.length);
  }
  const time = typeof env.time === 'string' ? Date.parse(env.time) : undefined;
  return { seq, key, tenantId, json: env.seq === undefined ? JSON.stringify({ ...env, seq }) : json, time };
}
