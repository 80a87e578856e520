// Live: the log as the projections apply it, as it happens, through the dashboard's
// notifications endpoint (`/notifications/ws`, read-models:read) and the dashboard's own
// JavaScript client (`/notifications/client.js`: reconnection with backoff, resume from the
// last position). One row per event, however many documents (of however many projections) it
// changed; the global log (every projection) or one projection's, and one stream's tail;
// pausable, and bounded to the newest rows, held ones included.
import { useEffect, useRef, useState } from 'preact/hooks';
import { call, currentToken } from '../api.js';
import { go, href } from '../route.js';
import { ErrorBox, Needs, Time, useLoad } from '../ui.jsx';
import { MAX_ROWS, addRow, inStream, rowOf, shows } from '../tail.js';

/// Subscriptions one connection may hold (the server's default per-client bound).
const MAX_SUBSCRIPTIONS = 64;

let clientScript = null;

/// Loads the dashboard's notification client once (same origin, so the page's policy allows it).
function loadClient() {
  if (!clientScript) {
    clientScript = new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = '/notifications/client.js';
      script.onload = () => resolve(globalThis.NexusNotifications);
      script.onerror = () => {
        clientScript = null;
        script.remove();
        reject(new Error('the notification client did not load'));
      };
      document.head.appendChild(script);
    });
  }
  return clientScript;
}

export function Live({ route }) {
  const projections = useLoad(() => call('query', '/read-models'), []);
  const names = projections.data ? projections.data.projections.map((p) => p.name) : [];
  const chosen = route.parts[1] || '';
  const stream = route.params.get('stream') || '';
  const following = chosen ? names.filter((n) => n === chosen) : names.slice(0, MAX_SUBSCRIPTIONS);
  const at = (projection, s) => href(projection ? ['live', projection] : ['live'], s ? { stream: s } : undefined);
  return (
    <Needs permission="read-models:read">
      <section aria-labelledby="live-title">
        <h1 id="live-title">Live{stream && <> · <code>{stream}</code></>}</h1>
        <p class="muted">
          Each event as the projections apply it, newest first. Ask for the event itself on the stream's page.
        </p>
        <ErrorBox error={projections.error} />
        {names.length > 0 && (
          <div class="filters" role="group" aria-label="Projection">
            <a class="chip" href={at('', stream)} aria-current={chosen === '' ? 'true' : undefined}>all projections</a>
            {names.map((n) => (
              <a key={n} class="chip" href={at(n, stream)} aria-current={n === chosen ? 'true' : undefined}>{n}</a>
            ))}
          </div>
        )}
        {chosen === '' && names.length > MAX_SUBSCRIPTIONS && (
          <p class="notice" role="note">Following the first {MAX_SUBSCRIPTIONS} of {names.length} projections; pick one to follow another.</p>
        )}
        {projections.data && chosen && following.length === 0 && <p class="notice" role="note">No projection named <code>{chosen}</code>.</p>}
        {following.length > 0 && (
          <Tail key={following.join(',')} projections={following} stream={stream}
            onStream={(s) => go(chosen ? ['live', chosen] : ['live'], s ? { stream: s } : undefined)} />
        )}
      </section>
    </Needs>
  );
}

function Tail({ projections, stream, onStream }) {
  const [rows, setRows] = useState([]);
  const [held, setHeld] = useState({ list: [], dropped: 0 });
  const [paused, setPaused] = useState(false);
  const [status, setStatus] = useState('connecting');
  const [error, setError] = useState(null);
  const [draft, setDraft] = useState(stream);
  const pausedRef = useRef(false);
  pausedRef.current = paused;
  const rowsRef = useRef(rows);
  rowsRef.current = rows;
  const streamRef = useRef(stream);
  streamRef.current = stream;

  useEffect(() => setDraft(stream), [stream]);
  // A new stream filter keeps only the rows of that stream.
  useEffect(() => setRows((list) => list.filter((r) => r.reset || inStream(r, stream))), [stream]);

  useEffect(() => {
    let client = null;
    let live = true;
    loadClient().then(
      (Client) => {
        if (!live) return;
        client = new Client(location.origin, {
          token: currentToken() || undefined,
          onStatus: (s, detail) => {
            setStatus(s);
            if (s === 'open') setError(null);
            if (s === 'error' || s === 'closed') setError(new Error((detail && (detail.message || detail.reason)) || s));
          },
        });
        for (const projection of projections) {
          client.subscribe(`live-${projection}`, { projection }, {
            notification: (n) => {
              if (!inStream(n, streamRef.current)) return;
              const row = rowOf(n);
              if (pausedRef.current && !shows(rowsRef.current, row)) setHeld((h) => {
                const { list, dropped } = addRow(h.list, row);
                return { list, dropped: h.dropped + dropped };
              });
              else setRows((list) => addRow(list, row).list);
            },
            reset: (r) => setRows((list) => [{ reset: true, key: `${r.projection}-${r.epoch}-${Date.now()}`, projection: r.projection }, ...list].slice(0, MAX_ROWS)),
          });
        }
      },
      (err) => live && setError(err),
    );
    return () => {
      live = false;
      if (client) client.close();
    };
  }, [projections.join(',')]);

  const resume = () => {
    // Oldest first, so the newest held row ends up on top.
    setRows((list) => held.list.reduceRight((acc, row) => addRow(acc, row).list, list));
    setHeld({ list: [], dropped: 0 });
    setPaused(false);
  };
  const waiting = held.list.length + held.dropped;

  return (
    <>
      <div class="title-row">
        <p>
          <span class={`status ${status === 'open' ? 'running' : 'retrying'}`} data-field="live-status">{status}</span>
          <span class="muted"> · {projections.length === 1 ? projections[0] : `${projections.length} projections`} · at most {MAX_ROWS} rows</span>
        </p>
        <form class="inline" aria-label="Follow a stream" onSubmit={(e) => { e.preventDefault(); onStream(draft.trim()); }}>
          <label>Stream <input name="stream" value={draft} placeholder="order/o-1, or an id" onInput={(e) => setDraft(e.currentTarget.value)} /></label>
          <button type="submit">Follow</button>
          {stream && <button type="button" onClick={() => onStream('')}>All streams</button>}
        </form>
        {paused ? (
          <button type="button" onClick={resume} aria-pressed="true" data-field="live-resume">
            Resume ({waiting} new{held.dropped ? `, ${held.dropped} older ones dropped` : ''})
          </button>
        ) : (
          <button type="button" onClick={() => setPaused(true)} aria-pressed="false">Pause</button>
        )}
        <button type="button" onClick={() => setRows([])}>Clear</button>
      </div>
      <ErrorBox error={error} />
      <table class="live" aria-live="off" aria-label="Live tail">
        <thead>
          <tr>
            <th scope="col" class="num">Log position</th><th scope="col">Stream</th><th scope="col" class="num">Version</th>
            <th scope="col">Recorded</th><th scope="col">Documents changed</th><th scope="col">Correlation</th>
          </tr>
        </thead>
        <tbody>
          {rows.length === 0 && <tr><td colSpan={6} class="muted">Waiting for events…</td></tr>}
          {rows.map((r) => (r.reset ? (
            <tr key={r.key}><td colSpan={6} class="muted">The positions of {r.projection} started over (rebuilt or restarted); what came before may be missing here.</td></tr>
          ) : (
            <tr key={r.event_id} data-stream={`${r.aggregate_type}/${r.aggregate_id}`} data-event-id={r.event_id}>
              <td class="num">{r.log_position}</td>
              <td><a href={href(['streams', r.aggregate_type, r.aggregate_id])}>{r.aggregate_type}/{r.aggregate_id}</a></td>
              <td class="num">
                {r.aggregate_version}
                {r.coalesced && <span class="muted" title={`${r.coalesced.count} changes delivered as one`}> (from {r.coalesced.from_version})</span>}
              </td>
              <td><Time value={r.recorded_at} /></td>
              <td>{r.documents.map((d) => <code key={d} class="id">{d}</code>)}</td>
              <td><code class="id">{r.correlation_id || '–'}</code></td>
            </tr>
          )))}
        </tbody>
      </table>
    </>
  );
}
