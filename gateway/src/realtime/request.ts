/** Validating what a client asks for: patterns and a resume cursor (shared by SSE and WS). */
import { checkPattern, Matcher } from './patterns';

export class BadSubscription extends Error {
  constructor(readonly code: 'invalid-pattern' | 'invalid-cursor', readonly field: string, message: string) {
    super(message);
  }
}

export function parsePatterns(patterns: string[], maxPatterns: number): Matcher {
  const list = patterns.length === 0 ? ['#'] : patterns;
  if (list.length > maxPatterns) throw new BadSubscription('invalid-pattern', 'types', `at most ${maxPatterns} patterns per subscription`);
  for (const p of list) {
    const why = checkPattern(p);
    if (why) throw new BadSubscription('invalid-pattern', 'types', why);
  }
  return new Matcher(list);
}

/** A resume cursor: an audit seq this feed returned (a non-negative integer), or null. */
export function parseCursor(value: unknown, field: string): number | null {
  if (value === undefined || value === null || value === '') return null;
  const text = typeof value === 'number' ? String(value) : typeof value === 'string' ? value.trim() : '';
  if (!/^\d{1,15}$/.test(text)) {
    throw new BadSubscription('invalid-cursor', field, `${field} must be the seq of an event this feed sent (a non-negative integer), not ${JSON.stringify(value)}`);
  }
  return Number(text);
}

export const aheadOfFeed = (field: string, cursor: number, newest: number) =>
  new BadSubscription('invalid-cursor', field, `${field} ${cursor} is ahead of this tenant's feed (newest seq ${newest}); it did not come from this feed`);
