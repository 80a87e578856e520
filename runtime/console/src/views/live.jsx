// Live: what each projection applies, as it happens, through the dashboard's notifications
// endpoint (`/notifications/ws`, read-models:read), with the dashboard's own JavaScript client
// (`/notifications/client.js`: reconnection with backoff, resume from the last position).
// One row per event (several documents an event changes arrive as one row); the whole log of
// the projection, or one stream's tail; pausable, and bounded to the newest rows.
import { useEffect, useRef, useState } from 'preact/hooks';
import { call, currentToken } from '../api.js';
import { href } from '../route.js';
import { ErrorBox, Needs, Time, useLoad } from '../ui.jsx';

/// Rows kept on screen (and held while paused).
const MAX_ROWS = 200;

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
  const projection = route.parts[1] || names[0];
  const stream = route.params.get('stream') || '';
  return (
    <Needs permission="read-models:read">
      <section aria-labelledby="live-title">
        <h1 id="live-title">Live</h1>
        <ErrorBox error={projections.error} />
        {names.length > 0 && (
          <div class="filters" role="group" aria-label="Projection">
            {names.map((n) => (
              <a key={n} class="chip" href={href(['live', n], stream ? { stream } : undefined)} aria-current={n === projection ? 'true' : undefined}>{n}</a>
            ))}
          </div>
        )}
        {projection && <Tail key={projection} projection={projection} stream={stream} />}
      </section>
    </Needs>
  );
}

function Tail({ projection, stream }) {
  const [rows, setRows] = useState([]);
  const [held, setHeld] = useState([]);
  const [paused, setPaused] = useState(false);
  const [status, setStatus] = useState('connecting');
  const [error, setError] = useState(null);
  const [filter, setFilter] = useState(stream);
  const pausedRef = useRef(false);
  pausedRef.current = paused;

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
            if (s === 'error' || s === 'closed') setError(new Error((detail && (detail.message || detail.reason)) || s));
          },
        });
        client.subscribe('live', { projection }, {
          notification: (n) => {
            const add = (list) => {
              if (list.length && list[0].event_id === n.event_id) {
                const [first, ...rest] = list;
                return [{ ...first, documents: [...first.documents, `${n.collection}/${n.id}`] }, ...rest];
              }
              return [{ ...n, documents: [`${n.collection}/${n.id}`] }, ...list].slice(0, MAX_ROWS);
            };
            if (pausedRef.current) setHeld(add);
            else setRows(add);
          },
          reset: () => setRows((list) => [{ reset: true, position: Date.now() }, ...list].slice(0, MAX_ROWS)),
        });
      },
      (err) => live && setError(err),
    );
    return () => {
      live = false;
      if (client) client.close();
    };
  }, [projection]);

  const resume = () => {
    setRows((list) => [...held, ...list].slice(0, MAX_ROWS));
    setHeld([]);
    setPaused(false);
  };
  const shown = filter ? rows.filter((r) => r.reset || r.aggregate_id === filter) : rows;

  return (
    <>
      <div class="title-row">
        <p>
          <span class={`status ${status === 'open' ? 'running' : 'retrying'}`} data-field="live-status">{status}</span>
          <span class="muted"> · newest first, at most {MAX_ROWS}</span>
        </p>
        <form class="inline" onSubmit={(e) => e.preventDefault()}>
          <label>Stream id <input value={filter} placeholder="all streams" onInput={(e) => setFilter(e.currentTarget.value.trim())} /></label>
        </form>
        {paused ? (
          <button type="button" onClick={resume} aria-pressed="true">Resume ({held.length} new)</button>
        ) : (
          <button type="button" onClick={() => setPaused(true)} aria-pressed="false">Pause</button>
        )}
      </div>
      <ErrorBox error={error} />
      <table class="live" aria-live="off">
        <thead>
          <tr>
            <th scope="col" class="num">Log position</th><th scope="col">Stream</th><th scope="col" class="num">Version</th>
            <th scope="col">Recorded</th><th scope="col">Documents changed</th><th scope="col">Correlation</th>
          </tr>
        </thead>
        <tbody>
          {shown.length === 0 && <tr><td colSpan={6} class="muted">Waiting for events…</td></tr>}
          {shown.map((r) => (r.reset ? (
            <tr key={`reset-${r.position}`}><td colSpan={6} class="muted">The projection's positions started over (rebuilt or restarted); what came before may be missing here.</td></tr>
          ) : (
            <tr key={r.event_id} data-stream={`${r.aggregate_type}/${r.aggregate_id}`}>
              <td class="num">{r.log_position}</td>
              <td><a href={href(['streams', r.aggregate_type, r.aggregate_id])}>{r.aggregate_type}/{r.aggregate_id}</a></td>
              <td class="num">{r.aggregate_version}</td>
              <td><Time value={r.recorded_at} /></td>
              <td>{r.documents.map((d) => <code key={d} class="id">{d} </code>)}</td>
              <td><code class="id">{r.correlation_id || '–'}</code></td>
            </tr>
          )))}
        </tbody>
      </table>
    </>
  );
}
