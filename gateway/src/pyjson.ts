/** JSON exactly as the Python API writes it (pydantic-core's `model_dump_json`), so the
 * gateway's document bodies are byte-equal to Python's `serialize` (docs/contracts/cache.md).
 *
 * Differences from JSON.parse/JSON.stringify that matter:
 * - integers keep every digit (Python ints are unbounded; JS numbers are not);
 * - floats are written the way pydantic-core writes them (ryu digits, `1.0`, `1e+20`,
 *   `0.00001`, `1.5e-7`), while JS writes `1`, `100000000000000000000`, `0.00001`, `1.5e-7`;
 * - a float too large for a double (PostgreSQL numerics can be) becomes `null`, as in pydantic.
 * Strings: JSON.stringify and pydantic escape the same set (`"`, `\`, control characters as
 * \b \t \n \f \r or lowercase \u00XX) and write everything else as raw UTF-8. */

export type PyValue = null | boolean | string | PyNumber | PyValue[] | PyObject;

/** An object as an insertion-ordered Map: JS objects would move integer-like keys first. */
export type PyObject = Map<string, PyValue>;

/** A number as written in the source JSON text. */
export class PyNumber {
  constructor(readonly text: string) {}
}

/** Parse JSON text keeping number literals (JSON from PostgreSQL `jsonb::text`). */
export function parse(text: string): PyValue {
  let i = 0;
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 32 || c === 9 || c === 10 || c === 13) i++;
      else break;
    }
  };
  const value = (): PyValue => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const out: PyObject = new Map();
      ws();
      if (text[i] === '}') { i++; return out; }
      for (;;) {
        ws();
        const key = str();
        ws();
        if (text[i++] !== ':') throw new SyntaxError(`expected : at ${i - 1}`);
        const v = value();
        // Python's json.loads keeps the last duplicate, in the first one's position.
        out.set(key, v);
        ws();
        const sep = text[i++];
        if (sep === '}') return out;
        if (sep !== ',') throw new SyntaxError(`expected , or } at ${i - 1}`);
      }
    }
    if (c === '[') {
      i++;
      const out: PyValue[] = [];
      ws();
      if (text[i] === ']') { i++; return out; }
      for (;;) {
        out.push(value());
        ws();
        const sep = text[i++];
        if (sep === ']') return out;
        if (sep !== ',') throw new SyntaxError(`expected , or ] at ${i - 1}`);
      }
    }
    if (c === '"') return str();
    if (text.startsWith('true', i)) { i += 4; return true; }
    if (text.startsWith('false', i)) { i += 5; return false; }
    if (text.startsWith('null', i)) { i += 4; return null; }
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 1100));
    if (!m) throw new SyntaxError(`unexpected ${JSON.stringify(c)} at ${i}`);
    i += m[0].length;
    return new PyNumber(m[0]);
  };
  const str = (): string => {
    if (text[i] !== '"') throw new SyntaxError(`expected string at ${i}`);
    let j = i + 1;
    while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
    const s = JSON.parse(text.slice(i, j + 1)) as string;
    i = j + 1;
    return s;
  };
  const out = value();
  ws();
  if (i !== text.length) throw new SyntaxError(`trailing data at ${i}`);
  return out;
}

/** A JS double written as pydantic-core writes a Python float. */
export function formatFloat(x: number): string {
  if (!Number.isFinite(x)) return 'null';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  // Shortest round-trip digits and decimal exponent from JS (same digits as ryu).
  const [mant, expPart] = Math.abs(x).toExponential().split('e');
  const digits = mant.replace('.', '');
  const length = digits.length;
  const e10 = Number(expPart); // value = d.ddd × 10^e10
  const kk = e10 + 1; // position of the decimal point relative to the digits
  const k = kk - length; // value = digits × 10^k
  let body: string;
  if (k >= 0 && kk <= 16) {
    body = digits + '0'.repeat(k) + '.0';
  } else if (kk > 0 && kk <= 16) {
    body = digits.slice(0, kk) + '.' + digits.slice(kk);
  } else if (kk > -5 && kk <= 0) {
    body = '0.' + '0'.repeat(-kk) + digits;
  } else {
    const exp = kk - 1;
    const e = exp < 0 ? `e${exp}` : `e+${exp}`;
    body = (length === 1 ? digits : digits[0] + '.' + digits.slice(1)) + e;
  }
  return sign + body;
}

function formatNumber(n: PyNumber): string {
  const t = n.text;
  if (!/[.eE]/.test(t)) {
    // A Python int: digits as written, without a sign on zero.
    return t === '-0' ? '0' : t;
  }
  return formatFloat(Number(t));
}

/** Serialize like pydantic-core: compact, keys in insertion order. */
export function stringify(v: PyValue): string {
  if (v === null) return 'null';
  if (v === true) return 'true';
  if (v === false) return 'false';
  if (typeof v === 'string') return JSON.stringify(v);
  if (v instanceof PyNumber) return formatNumber(v);
  if (Array.isArray(v)) return '[' + v.map(stringify).join(',') + ']';
  const parts: string[] = [];
  for (const [k, item] of v) parts.push(JSON.stringify(k) + ':' + stringify(item));
  return '{' + parts.join(',') + '}';
}
