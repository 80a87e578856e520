// Differences between two JSON values (state at two versions, two schema versions).

/// Every leaf path whose value differs: [{path, kind: 'added'|'removed'|'changed', before, after}].
export function jsonDiff(before, after, path = '') {
  const out = [];
  const isObject = (v) => v !== null && typeof v === 'object';
  if (isObject(before) && isObject(after) && Array.isArray(before) === Array.isArray(after)) {
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    for (const key of [...keys].sort(compareKeys)) {
      const child = `${path}/${String(key).replace(/~/g, '~0').replace(/\//g, '~1')}`;
      if (!(key in after)) out.push({ path: child, kind: 'removed', before: before[key] });
      else if (!(key in before)) out.push({ path: child, kind: 'added', after: after[key] });
      else out.push(...jsonDiff(before[key], after[key], child));
    }
    return out;
  }
  if (JSON.stringify(before) !== JSON.stringify(after)) {
    out.push({ path: path || '/', kind: 'changed', before, after });
  }
  return out;
}

function compareKeys(a, b) {
  const [x, y] = [Number(a), Number(b)];
  if (Number.isInteger(x) && Number.isInteger(y)) return x - y;
  return String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0;
}

/// A side-by-side line diff (longest common subsequence), bounded: beyond `limit` lines a side
/// the rest is compared line by line.
export function lineDiff(left, right, limit = 2000) {
  const a = left.split('\n');
  const b = right.split('\n');
  if (a.length > limit || b.length > limit) {
    const rows = [];
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      const same = a[i] === b[i];
      rows.push({ left: a[i] ?? null, right: b[i] ?? null, kind: same ? 'same' : 'changed', leftNo: i < a.length ? i + 1 : null, rightNo: i < b.length ? i + 1 : null });
    }
    return rows;
  }
  const n = a.length;
  const m = b.length;
  const table = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
    }
  }
  const rows = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      rows.push({ left: a[i], right: b[j], kind: 'same', leftNo: i + 1, rightNo: j + 1 });
      i++;
      j++;
    } else if (j < m && (i === n || table[i][j + 1] >= table[i + 1][j])) {
      rows.push({ left: null, right: b[j], kind: 'added', leftNo: null, rightNo: j + 1 });
      j++;
    } else {
      rows.push({ left: a[i], right: null, kind: 'removed', leftNo: i + 1, rightNo: null });
      i++;
    }
  }
  return rows;
}

/// Pretty JSON with sorted keys, so two versions line up.
export function canonical(value) {
  const sort = (v) => {
    if (Array.isArray(v)) return v.map(sort);
    if (v !== null && typeof v === 'object') {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sort(v[k])]));
    }
    return v;
  };
  return JSON.stringify(sort(value), null, 2);
}

/// `canonical(value)` as lines, each with the JSON pointer of the value it opens or holds.
export function pointerLines(value) {
  const lines = [];
  const escape = (k) => String(k).replace(/~/g, '~0').replace(/\//g, '~1');
  const walk = (v, pointer, indent, prefix, comma) => {
    const pad = '  '.repeat(indent);
    const end = comma ? ',' : '';
    if (Array.isArray(v) || (v !== null && typeof v === 'object')) {
      const array = Array.isArray(v);
      const keys = array ? v.map((_, i) => i) : Object.keys(v).sort();
      if (keys.length === 0) {
        lines.push({ text: `${pad}${prefix}${array ? '[]' : '{}'}${end}`, pointer });
        return;
      }
      lines.push({ text: `${pad}${prefix}${array ? '[' : '{'}`, pointer });
      keys.forEach((k, i) => {
        const child = `${pointer}/${escape(k)}`;
        walk(v[k], child, indent + 1, array ? '' : `${JSON.stringify(String(k))}: `, i < keys.length - 1);
      });
      lines.push({ text: `${pad}${array ? ']' : '}'}${end}`, pointer });
      return;
    }
    lines.push({ text: `${pad}${prefix}${JSON.stringify(v)}${end}`, pointer });
  };
  walk(value, '', 0, '', false);
  return lines;
}

/// The pointers of `lines` that `pointers` name, each moved up to its nearest ancestor present.
export function markedPointers(pointers, ...sides) {
  const present = new Set(sides.flatMap((lines) => lines.map((l) => l.pointer)));
  const marked = new Map();
  for (const [pointer, why] of pointers) {
    let p = pointer;
    while (p && !present.has(p)) p = p.slice(0, p.lastIndexOf('/'));
    if (!marked.has(p)) marked.set(p, why);
  }
  return marked;
}
