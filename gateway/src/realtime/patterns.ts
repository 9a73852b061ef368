/** Event-type patterns: AMQP topic syntax over routing keys `<entity>.<action>` (the CloudEvents
 * type without `capstan.`). `*` is exactly one word, `#` zero or more words. */

const WORD = /^[a-z0-9_-]+$/;
export const KNOWN_ENTITIES = ['document', 'task'];

/** Why `pattern` is refused, or null when it is a valid pattern. A `capstan.` prefix is allowed. */
export function checkPattern(raw: string, entities: readonly string[] = KNOWN_ENTITIES): string | null {
  const pattern = normalize(raw);
  if (pattern.length === 0 || pattern.length > 200) return `pattern ${JSON.stringify(raw)} must be 1 to 200 characters`;
  const words = pattern.split('.');
  for (const w of words) {
    if (w !== '*' && w !== '#' && !WORD.test(w)) {
      return `pattern ${JSON.stringify(raw)} is not routing-key words ([a-z0-9_-]+, \`*\` for one word, \`#\` for any number) separated by dots`;
    }
  }
  const first = words[0];
  if (first !== '*' && first !== '#' && !entities.includes(first)) {
    return `pattern ${JSON.stringify(raw)} names an unknown entity ${JSON.stringify(first)}; known: ${entities.join(', ')}`;
  }
  return null;
}

export function normalize(pattern: string): string {
  const p = pattern.trim();
  return p.startsWith('capstan.') ? p.slice('capstan.'.length) : p;
}

/** A regular expression source that matches '.' + routing key (also valid PostgreSQL ARE). */
export function patternSource(pattern: string): string {
  return normalize(pattern)
    .split('.')
    .map((w) => (w === '#' ? '(\\.[^.]+)*' : w === '*' ? '\\.[^.]+' : '\\.' + w.replace(/[-]/g, '\\-')))
    .join('');
}

/** One expression for a list of patterns: `^(p1|p2)$` over '.' + routing key. */
export function combinedSource(patterns: readonly string[]): string {
  return '^(' + patterns.map(patternSource).join('|') + ')$';
}

export class Matcher {
  readonly patterns: string[];
  readonly source: string;
  private readonly re: RegExp;
  private readonly memo = new Map<string, boolean>();

  constructor(patterns: readonly string[]) {
    this.patterns = [...new Set(patterns.map(normalize))];
    this.source = combinedSource(this.patterns);
    this.re = new RegExp(this.source);
  }

  matches(routingKey: string): boolean {
    let hit = this.memo.get(routingKey);
    if (hit === undefined) {
      hit = this.re.test('.' + routingKey);
      if (this.memo.size < 256) this.memo.set(routingKey, hit);
    }
    return hit;
  }
}

/** Split `types=a.*,b.#` (comma separated, repeated params allowed) into patterns. */
export function splitTypes(value: string | string[] | undefined): string[] {
  const all = Array.isArray(value) ? value : value === undefined ? [] : [value];
  return all.flatMap((v) => v.split(',')).map((s) => s.trim()).filter((s) => s.length > 0);
}
