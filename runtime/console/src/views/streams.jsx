// Streams: aggregate types (from the command service's OpenAPI document), the streams of a type
// with events in a time window and a stream's events with their metadata (the dashboard's
// `GET /temporal/events`), and an aggregate's state at a version or time with the difference
// between two versions (the command service's `GET /temporal/state/{aggregate}/{id}`).
// All of it needs temporal:read; the temporal API's rate limit shows as a 429 with its wait.
import { useEffect, useState } from 'preact/hooks';
import { call, commandDoc, getConfig, servedBy } from '../api.js';
import { canonical, jsonDiff, lineDiff } from '../diff.js';
import { go, href } from '../route.js';
import { ErrorBox, Json, Needs, Time, traceId, useLoad } from '../ui.jsx';

const WINDOWS = [
  ['1h', 'last hour', 3600],
  ['24h', 'last 24 hours', 86400],
  ['7d', 'last 7 days', 7 * 86400],
  ['90d', 'last 90 days', 90 * 86400],
];

export function Streams({ route }) {
  const [, type, id] = route.parts;
  return (
    <Needs permission="temporal:read">
      {!type && <AggregateTypes />}
      {type && !id && <StreamsOfType type={type} window={route.params.get('window') || '24h'} />}
      {type && id && <Stream type={type} id={id} />}
    </Needs>
  );
}

function AggregateTypes() {
  const types = useLoad(async () => servedBy(await commandDoc()).aggregates, []);
  return (
    <section aria-labelledby="streams-title">
      <h1 id="streams-title">Streams</h1>
      <ErrorBox error={types.error} />
      {types.data && (
        <ul class="cards">
          {types.data.map((t) => (
            <li key={t}><a href={href(['streams', t])}>{t}</a></li>
          ))}
        </ul>
      )}
    </section>
  );
}

function StreamsOfType({ type, window }) {
  const seconds = (WINDOWS.find((w) => w[0] === window) || WINDOWS[1])[2];
  const [pages, setPages] = useState([]);
  const first = useLoad(async () => {
    setPages([]);
    return call('query', '/temporal/events', {
      query: { aggregate_type: type, from: new Date(Date.now() - seconds * 1000).toISOString(), limit: 1000 },
    });
  }, [type, window]);
  const [more, setMore] = useState({ error: null, busy: false });
  const all = first.data ? [first.data, ...pages] : [];
  const last = all[all.length - 1];

  const streams = new Map();
  for (const page of all) {
    for (const e of page.events) {
      const s = streams.get(e.stream.aggregate_id) || { id: e.stream.aggregate_id, events: 0, version: 0, last: null, lastType: '' };
      s.events += 1;
      if (e.version >= s.version) {
        s.version = e.version;
        s.last = e.recorded_at;
        s.lastType = e.event_type;
      }
      streams.set(s.id, s);
    }
  }
  const rows = [...streams.values()].sort((a, b) => (a.last < b.last ? 1 : -1));

  const loadMore = async () => {
    setMore({ error: null, busy: true });
    try {
      const page = await call('query', '/temporal/events', { query: { aggregate_type: type, token: last.next_token } });
      setPages([...pages, page]);
      setMore({ error: null, busy: false });
    } catch (error) {
      setMore({ error, busy: false });
    }
  };

  const [open, setOpen] = useState('');
  return (
    <section aria-labelledby="type-title">
      <p class="crumbs"><a href={href(['streams'])}>Streams</a> /</p>
      <h1 id="type-title">{type}</h1>
      <form class="inline" onSubmit={(e) => { e.preventDefault(); if (open.trim()) go(['streams', type, open.trim()]); }}>
        <label>Open stream <input name="id" value={open} placeholder={`${type} id`} onInput={(e) => setOpen(e.currentTarget.value)} /></label>
        <button type="submit">Open</button>
      </form>
      <div class="filters" role="group" aria-label="Time window">
        {WINDOWS.map(([key, label]) => (
          <a key={key} class="chip" href={href(['streams', type], { window: key })} aria-current={key === window ? 'true' : undefined}>{label}</a>
        ))}
      </div>
      <ErrorBox error={first.error} />
      {first.loading && <p class="muted">Loading…</p>}
      {first.data && (
        <>
          <p class="muted">
            {rows.length} streams with events in the {(WINDOWS.find((w) => w[0] === window) || WINDOWS[1])[1]}
            {' '}({all.reduce((n, p) => n + p.scanned, 0)} events read)
          </p>
          <table>
            <thead>
              <tr><th scope="col">Stream</th><th scope="col" class="num">Version</th><th scope="col">Last event</th><th scope="col">At</th><th scope="col" class="num">Events in window</th></tr>
            </thead>
            <tbody>
              {rows.map((s) => (
                <tr key={s.id}>
                  <th scope="row"><a href={href(['streams', type, s.id])}>{s.id}</a></th>
                  <td class="num">{s.version}</td>
                  <td>{s.lastType}</td>
                  <td><Time value={s.last} /></td>
                  <td class="num">{s.events}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {last && last.partial && (
            <button type="button" onClick={loadMore} disabled={more.busy}>Read more of the window</button>
          )}
          <ErrorBox error={more.error} />
        </>
      )}
    </section>
  );
}

function Stream({ type, id }) {
  const [pages, setPages] = useState([]);
  const first = useLoad(() => {
    setPages([]);
    return call('query', '/temporal/events', { query: { aggregate_type: type, aggregate_id: id, limit: 200 } });
  }, [type, id]);
  const [more, setMore] = useState({ error: null, busy: false });
  const all = first.data ? [first.data, ...pages] : [];
  const events = all.flatMap((p) => p.events);
  const last = all[all.length - 1];
  const [stateAt, setStateAt] = useState(null);

  const loadMore = async () => {
    setMore({ error: null, busy: true });
    try {
      const page = await call('query', '/temporal/events', {
        query: { aggregate_type: type, aggregate_id: id, token: last.next_token },
      });
      setPages([...pages, page]);
      setMore({ error: null, busy: false });
    } catch (error) {
      setMore({ error, busy: false });
    }
  };

  const head = events.length ? events[events.length - 1].version : 0;
  return (
    <section aria-labelledby="stream-title">
      <p class="crumbs"><a href={href(['streams'])}>Streams</a> / <a href={href(['streams', type])}>{type}</a> /</p>
      <div class="title-row">
        <h1 id="stream-title">{type} <code>{id}</code></h1>
        <a href={href(['live'], { stream: `${type}/${id}` })}>Live tail of this stream</a>
      </div>
      <ErrorBox error={first.error} />
      {first.loading && <p class="muted">Loading…</p>}
      {first.data && (
        <>
          <h2>Events</h2>
          {events.length === 0 && <p class="muted">No events in the last 90 days.</p>}
          <EventTable events={events} onState={(v) => setStateAt({ version: v })} />
          {last && last.partial && (
            <button type="button" onClick={loadMore} disabled={more.busy}>Next events</button>
          )}
          <ErrorBox error={more.error} />
          {getConfig().command_url && (
            <div class="two">
              <StatePanel type={type} id={id} head={head} request={stateAt} />
              <DiffPanel type={type} id={id} head={head} />
            </div>
          )}
        </>
      )}
    </section>
  );
}

function EventTable({ events, onState }) {
  const [open, setOpen] = useState(null);
  const template = getConfig().trace_url;
  return (
    <table class="events">
      <thead>
        <tr>
          <th scope="col" class="num">Version</th><th scope="col">Type</th><th scope="col">Recorded</th>
          <th scope="col" class="num">Position</th><th scope="col">Correlation</th><th scope="col">Causation</th>
          <th scope="col">Trace</th><th scope="col"><span class="sr-only">Actions</span></th>
        </tr>
      </thead>
      <tbody>
        {events.map((e) => {
          const trace = traceId(e.metadata.traceparent);
          const expanded = open === e.id;
          return [
            <tr key={e.id} data-event-type={e.event_type}>
              <td class="num">{e.version}</td>
              <td><code>{e.event_type}</code> <span class="muted">v{e.schema_version}</span></td>
              <td><Time value={e.recorded_at} /></td>
              <td class="num">{e.position}</td>
              <td><code class="id">{e.metadata.correlation_id || '–'}</code></td>
              <td><code class="id">{e.metadata.causation_id || '–'}</code></td>
              <td>
                {trace && template ? (
                  <a href={template.replace('{trace_id}', trace)} rel="noreferrer" target="_blank">{trace.slice(0, 12)}…</a>
                ) : (
                  <code class="id">{trace ? `${trace.slice(0, 12)}…` : '–'}</code>
                )}
              </td>
              <td class="actions">
                <button type="button" aria-expanded={expanded} onClick={() => setOpen(expanded ? null : e.id)}>
                  {expanded ? 'Hide' : 'Payload'}
                </button>
                <button type="button" onClick={() => onState(e.version)}>State</button>
              </td>
            </tr>,
            expanded && (
              <tr key={`${e.id}-detail`} class="detail">
                <td colSpan={8}>
                  <div class="two">
                    <div><h3>Payload</h3><Json value={e.payload} label="payload" /></div>
                    <div><h3>Metadata</h3><Json value={{ id: e.id, ...e.metadata }} label="metadata" /></div>
                  </div>
                </td>
              </tr>
            ),
          ];
        })}
      </tbody>
    </table>
  );
}

function stateQuery(type, id, at) {
  return call('command', `/temporal/state/${encodeURIComponent(type)}/${encodeURIComponent(id)}`, { query: at });
}

function StatePanel({ type, id, head, request }) {
  const [mode, setMode] = useState('version');
  const [version, setVersion] = useState(String(head || 1));
  const [time, setTime] = useState('');
  const [result, setResult] = useState({ data: null, error: null, busy: false });

  const load = async (at) => {
    setResult({ data: null, error: null, busy: true });
    try {
      setResult({ data: await stateQuery(type, id, at), error: null, busy: false });
    } catch (error) {
      setResult({ data: null, error, busy: false });
    }
  };
  useEffect(() => {
    if (!request) return;
    setMode('version');
    setVersion(String(request.version));
    load({ version: request.version });
  }, [request]);
  const submit = (e) => {
    e.preventDefault();
    load(mode === 'version' ? { version } : { at: new Date(time).toISOString() });
  };

  return (
    <div class="panel" aria-labelledby="state-title">
      <h2 id="state-title">State</h2>
      <form class="inline" onSubmit={submit}>
        <fieldset>
          <legend class="sr-only">As of</legend>
          <label><input type="radio" name="mode" checked={mode === 'version'} onChange={() => setMode('version')} /> at version</label>
          <input type="number" min="1" max={head || undefined} value={version} aria-label="version" disabled={mode !== 'version'}
            onInput={(e) => setVersion(e.currentTarget.value)} />
          <label><input type="radio" name="mode" checked={mode === 'time'} onChange={() => setMode('time')} /> at time</label>
          <input type="datetime-local" step="1" value={time} aria-label="time" disabled={mode !== 'time'}
            onInput={(e) => setTime(e.currentTarget.value)} />
        </fieldset>
        <button type="submit" disabled={result.busy}>Show state</button>
      </form>
      <ErrorBox error={result.error} />
      {result.data && (
        <>
          <p class="muted" data-field="state-version">
            Version {result.data.version} · {result.data.events_folded} event{result.data.events_folded === 1 ? '' : 's'} folded
            {result.data.snapshot_version ? ` onto the snapshot at version ${result.data.snapshot_version}` : ' from the start'}
          </p>
          <Json value={result.data.state} label="state" />
        </>
      )}
    </div>
  );
}

function DiffPanel({ type, id, head }) {
  const [from, setFrom] = useState(String(Math.max(1, head - 1)));
  const [to, setTo] = useState(String(head || 1));
  const [result, setResult] = useState({ data: null, error: null, busy: false });

  const submit = async (e) => {
    e.preventDefault();
    setResult({ data: null, error: null, busy: true });
    try {
      const before = await stateQuery(type, id, { version: from });
      const after = await stateQuery(type, id, { version: to });
      setResult({ data: { before, after }, error: null, busy: false });
    } catch (error) {
      setResult({ data: null, error, busy: false });
    }
  };

  const data = result.data;
  const changes = data ? jsonDiff(data.before.state, data.after.state) : [];
  return (
    <div class="panel" aria-labelledby="diff-title">
      <h2 id="diff-title">Difference between two versions</h2>
      <form class="inline" onSubmit={submit}>
        <label>From version <input type="number" min="1" value={from} onInput={(e) => setFrom(e.currentTarget.value)} /></label>
        <label>to version <input type="number" min="1" value={to} onInput={(e) => setTo(e.currentTarget.value)} /></label>
        <button type="submit" disabled={result.busy}>Compare</button>
      </form>
      <ErrorBox error={result.error} />
      {data && (
        <>
          <table class="changes" aria-label="Changed fields">
            <thead><tr><th scope="col">Field</th><th scope="col">Version {data.before.version}</th><th scope="col">Version {data.after.version}</th></tr></thead>
            <tbody>
              {changes.length === 0 && <tr><td colSpan={3} class="muted">No difference</td></tr>}
              {changes.map((c) => (
                <tr key={c.path} class={c.kind}>
                  <th scope="row"><code>{c.path}</code></th>
                  <td><code>{c.kind === 'added' ? '–' : JSON.stringify(c.before)}</code></td>
                  <td><code>{c.kind === 'removed' ? '–' : JSON.stringify(c.after)}</code></td>
                </tr>
              ))}
            </tbody>
          </table>
          <SideBySide left={canonical(data.before.state)} right={canonical(data.after.state)}
            leftLabel={`version ${data.before.version}`} rightLabel={`version ${data.after.version}`} />
        </>
      )}
    </div>
  );
}

/// Two texts side by side, line by line; with `leftLines`/`rightLines` (from pointerLines) and
/// `marked` (pointer → reason), the lines of those pointers are marked as breaking.
export function SideBySide({ left, right, leftLabel, rightLabel, leftLines, rightLines, marked }) {
  const rows = lineDiff(left, right);
  const mark = (lines, no) => (marked && lines && no ? marked.get(lines[no - 1].pointer) : null);
  return (
    <table class="side-by-side" aria-label={`${leftLabel} beside ${rightLabel}`}>
      <colgroup><col class="no" /><col /><col class="no" /><col /></colgroup>
      <thead><tr><th scope="col" colSpan={2}>{leftLabel}</th><th scope="col" colSpan={2}>{rightLabel}</th></tr></thead>
      <tbody>
        {rows.map((r, i) => {
          const why = mark(rightLines, r.rightNo) || mark(leftLines, r.leftNo);
          return (
            <tr key={i} class={`${r.kind}${why ? ' breaking' : ''}`} title={why || undefined}>
              <td class="no">{r.leftNo ?? ''}</td>
              <td class="line old"><code>{r.left ?? ''}</code></td>
              <td class="no">{r.rightNo ?? ''}</td>
              <td class="line new"><code>{r.right ?? ''}</code>{why && <span class="badge" title={why}>breaking</span>}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}
