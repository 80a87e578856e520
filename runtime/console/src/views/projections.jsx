// Projections: status, position, lag in events and seconds, throughput, retrying keys and dead
// letters from `GET /health` (polled), and a rebuild as of a time through
// `POST /admin/projections/{name}/replay` (permission dlq:admin), after a confirmation.
import { useEffect, useRef, useState } from 'preact/hooks';
import { call } from '../api.js';
import { href } from '../route.js';
import { Confirm, ErrorBox, Sparkline, Time, useInterval, useSession } from '../ui.jsx';

const POLL_MS = 2000;
const SAMPLES = 30;

export function Projections() {
  const [health, setHealth] = useState(null);
  const [error, setError] = useState(null);
  const [paused, setPaused] = useState(false);
  const history = useRef({});
  const [rebuild, setRebuild] = useState(null);
  const { can } = useSession();

  const poll = async () => {
    try {
      const body = await call('query', '/health', { okStatuses: [503] });
      const now = Date.now();
      for (const p of body.projections) {
        const samples = history.current[p.name] || [];
        samples.push({ at: now, processed: p.processed });
        if (samples.length > SAMPLES + 1) samples.shift();
        history.current[p.name] = samples;
      }
      setHealth(body);
      setError(null);
    } catch (err) {
      setError(err);
    }
  };
  useInterval(poll, POLL_MS, !paused);
  useEffect(() => {
    poll();
  }, []);

  const rate = (name) => {
    const samples = history.current[name] || [];
    const rates = [];
    for (let i = 1; i < samples.length; i++) {
      const seconds = (samples[i].at - samples[i - 1].at) / 1000;
      rates.push(seconds > 0 ? Math.max(0, samples[i].processed - samples[i - 1].processed) / seconds : 0);
    }
    return rates;
  };

  return (
    <section aria-labelledby="projections-title">
      <div class="title-row">
        <h1 id="projections-title">Projections</h1>
        <button type="button" onClick={() => setPaused(!paused)} aria-pressed={paused}>
          {paused ? 'Resume updates' : 'Pause updates'}
        </button>
      </div>
      <ErrorBox error={error} />
      {health && (
        <>
          <p>
            Overall: <span class={`status ${health.status}`}>{health.status}</span>
            <span class="muted"> · updated every {POLL_MS / 1000} s</span>
          </p>
          <table class="projections">
            <thead>
              <tr>
                <th scope="col">Projection</th>
                <th scope="col">Status</th>
                <th scope="col" class="num">Position</th>
                <th scope="col" class="num">Lag (events)</th>
                <th scope="col" class="num">Lag (s)</th>
                <th scope="col">Throughput (events/s)</th>
                <th scope="col" class="num">Retrying keys</th>
                <th scope="col" class="num">Dead letters</th>
                <th scope="col">Last error</th>
                <th scope="col"><span class="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {health.projections.map((p) => {
                const rates = rate(p.name);
                return (
                  <tr key={p.name} data-projection={p.name}>
                    <th scope="row"><a href={href(['read-models', p.name])}>{p.name}</a></th>
                    <td><span class={`status ${p.status}`}>{p.status}</span></td>
                    <td class="num">{p.last_position}</td>
                    <td class="num" data-field="lag-events">{p.lag_events}</td>
                    <td class="num" data-field="lag-seconds">{p.lag_seconds.toFixed(1)}</td>
                    <td>
                      <Sparkline values={rates} label={`${p.name} throughput`} />{' '}
                      <span class="muted">{rates.length ? rates[rates.length - 1].toFixed(1) : '–'}</span>
                    </td>
                    <td class="num">{p.retrying_keys}</td>
                    <td class="num">
                      {p.dead_letters > 0 ? <a href={href(['dead-letters', p.name])}>{p.dead_letters}</a> : 0}
                    </td>
                    <td class="error-text">{p.last_error || <span class="muted">–</span>}</td>
                    <td>
                      {can('dlq:admin') && (
                        <button type="button" onClick={() => setRebuild({ name: p.name })}>Rebuild…</button>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <p class="muted">Updated <Time value={new Date()} /></p>
        </>
      )}
      {rebuild && <Rebuild name={rebuild.name} onClose={() => setRebuild(null)} />}
    </section>
  );
}

function localNow() {
  const now = new Date();
  now.setSeconds(0, 0);
  return new Date(now.getTime() - now.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

/// Rebuilds a projection as it stood at a time into a new read model `replay-<into>`.
function Rebuild({ name, onClose }) {
  const [until, setUntil] = useState(localNow());
  const [into, setInto] = useState(`${name}-${Date.now().toString(36)}`);
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);

  const run = async () => {
    setBusy(true);
    setError(null);
    try {
      const body = await call('query', `/admin/projections/${encodeURIComponent(name)}/replay`, {
        method: 'POST',
        query: { until: new Date(until).toISOString(), into },
      });
      setResult(body);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  if (result) {
    return (
      <Confirm open title={`Rebuilt ${name}`} confirmLabel="Close" onConfirm={onClose} onCancel={onClose}>
        <p role="status">
          Read model <code>{result.read_model}</code>: {result.summary.applied} events applied of {result.summary.scanned} read.
        </p>
      </Confirm>
    );
  }
  return (
    <Confirm open title={`Rebuild ${name}?`} confirmLabel={busy ? 'Rebuilding…' : 'Rebuild'} busy={busy}
      onConfirm={run} onCancel={onClose}>
      <p>
        Replays the history up to the time below into a <em>new</em> read model <code>replay-{into}</code>.
        The live read model is not touched.
      </p>
      <label>Events recorded before <input type="datetime-local" value={until} required onInput={(e) => setUntil(e.currentTarget.value)} /></label>
      <label>Into <input value={into} required pattern="[a-z0-9_\-]{1,64}" onInput={(e) => setInto(e.currentTarget.value)} /></label>
      <ErrorBox error={error} />
    </Confirm>
  );
}
