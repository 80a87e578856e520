// Schemas: the registry's subjects and versions, two versions side by side with the breaking
// changes marked (the registry's own verdict: `POST /compatibility/subjects/{s}/versions/{v}`
// with the newer schema, `verbose=true`), and a box to check a proposed schema against the
// subject (`POST /compatibility/subjects/{s}/versions`).
import { useEffect, useState } from 'preact/hooks';
import { call } from '../api.js';
import { lineDiff, markedPointers, pointerLines } from '../diff.js';
import { go, href } from '../route.js';
import { ErrorBox, useLoad } from '../ui.jsx';
import { SideBySide } from './streams.jsx';

export function Schemas({ route }) {
  const [, subject] = route.parts;
  return subject ? <Subject subject={subject} params={route.params} /> : <Subjects />;
}

function Subjects() {
  const subjects = useLoad(() => call('registry', '/subjects'), []);
  return (
    <section aria-labelledby="subjects-title">
      <h1 id="subjects-title">Schemas</h1>
      <ErrorBox error={subjects.error} />
      {subjects.data && (
        <ul class="cards">
          {subjects.data.map((s) => <li key={s}><a href={href(['schemas', s])}>{s}</a></li>)}
        </ul>
      )}
    </section>
  );
}

const path = (subject) => `/subjects/${encodeURIComponent(subject)}`;

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function Subject({ subject, params }) {
  const versions = useLoad(() => call('registry', `${path(subject)}/versions`), [subject]);
  const list = versions.data || [];
  const right = params.get('right') || (list.length ? String(list[list.length - 1]) : null);
  const left = params.get('left') || (list.length > 1 ? String(list[list.length - 2]) : right);
  const choose = (which, value) => go(['schemas', subject], { left, right, [which]: value });

  return (
    <section aria-labelledby="subject-title">
      <p class="crumbs"><a href={href(['schemas'])}>Schemas</a> /</p>
      <h1 id="subject-title">{subject}</h1>
      <ErrorBox error={versions.error} />
      {list.length > 0 && (
        <>
          <form class="inline" onSubmit={(e) => e.preventDefault()}>
            <label>Compare version{' '}
              <select value={left} onChange={(e) => choose('left', e.currentTarget.value)}>
                {list.map((v) => <option key={v} value={v}>{v}</option>)}
              </select>
            </label>
            <label>with version{' '}
              <select value={right} onChange={(e) => choose('right', e.currentTarget.value)}>
                {list.map((v) => <option key={v} value={v}>{v}</option>)}
              </select>
            </label>
          </form>
          <Compare subject={subject} left={left} right={right} />
          <Check subject={subject} />
        </>
      )}
    </section>
  );
}

function Compare({ subject, left, right }) {
  const result = useLoad(async () => {
    const a = await call('registry', `${path(subject)}/versions/${left}`);
    const b = await call('registry', `${path(subject)}/versions/${right}`);
    let verdict = null;
    if (left !== right) {
      verdict = await call('registry', `/compatibility${path(subject)}/versions/${left}`, {
        method: 'POST',
        query: { verbose: 'true' },
        body: { schema: b.schema, schemaType: 'JSON' },
      });
    }
    return { a, b, verdict };
  }, [subject, left, right]);

  if (result.error) return <ErrorBox error={result.error} />;
  if (!result.data) return <p class="muted">Loading…</p>;
  const { a, b, verdict } = result.data;
  const leftLines = pointerLines(parse(a.schema));
  const rightLines = pointerLines(parse(b.schema));
  const violations = (verdict && verdict.violations) || [];
  const marked = markedPointers(violations.map((v) => [v.pointer, `${v.rule}: ${v.message}`]), leftLines, rightLines);
  const changed = lineDiff(leftLines.map((l) => l.text).join('\n'), rightLines.map((l) => l.text).join('\n')).filter((r) => r.kind !== 'same').length;
  return (
    <div aria-labelledby="compare-title">
      <h2 id="compare-title">Version {a.version} → version {b.version}</h2>
      {verdict && (
        <div role="status" class={`outcome ${verdict.is_compatible ? 'good' : 'bad'}`} data-compatible={String(verdict.is_compatible)}>
          {verdict.is_compatible
            ? <p>Version {b.version} is compatible with version {a.version} ({changed} lines differ).</p>
            : <p><strong>{violations.length} breaking change{violations.length === 1 ? '' : 's'}</strong> from version {a.version} to {b.version}:</p>}
          {violations.length > 0 && (
            <ul class="violations">
              {violations.map((v, i) => (
                <li key={i}><code>{v.pointer || '/'}</code> <span class="rule">{v.rule}</span> {v.message} <span class="muted">— {v.remediation}</span></li>
              ))}
            </ul>
          )}
        </div>
      )}
      <SideBySide
        left={leftLines.map((l) => l.text).join('\n')} right={rightLines.map((l) => l.text).join('\n')}
        leftLines={leftLines} rightLines={rightLines} marked={marked}
        leftLabel={`version ${a.version} (id ${a.id})`} rightLabel={`version ${b.version} (id ${b.id})`} />
    </div>
  );
}

function Check({ subject }) {
  const [text, setText] = useState('');
  const [result, setResult] = useState({ data: null, error: null, busy: false });
  useEffect(() => setResult({ data: null, error: null, busy: false }), [subject]);

  const submit = async (e) => {
    e.preventDefault();
    setResult({ data: null, error: null, busy: true });
    try {
      const data = await call('registry', `/compatibility${path(subject)}/versions`, {
        method: 'POST',
        query: { verbose: 'true' },
        body: { schema: text, schemaType: 'JSON' },
      });
      setResult({ data, error: null, busy: false });
    } catch (error) {
      setResult({ data: null, error, busy: false });
    }
  };

  return (
    <form class="check" onSubmit={submit} aria-labelledby="check-title">
      <h2 id="check-title">Check a schema against {subject}</h2>
      <label for="check-schema">A proposed JSON Schema</label>
      <textarea id="check-schema" rows={8} value={text} required spellcheck={false}
        onInput={(e) => setText(e.currentTarget.value)} />
      <button type="submit" disabled={result.busy}>Check compatibility</button>
      <ErrorBox error={result.error} />
      {result.data && (
        <div role="status" class={`outcome ${result.data.is_compatible ? 'good' : 'bad'}`} data-compatible={String(result.data.is_compatible)}>
          <p>{result.data.is_compatible ? 'Compatible: it can be registered as the next version.' : 'Incompatible:'}</p>
          {(result.data.violations || []).length > 0 && (
            <ul class="violations">
              {result.data.violations.map((v, i) => (
                <li key={i}><code>{v.pointer || '/'}</code> <span class="rule">{v.rule}</span> {v.message} <span class="muted">— {v.remediation}</span></li>
              ))}
            </ul>
          )}
        </div>
      )}
    </form>
  );
}
