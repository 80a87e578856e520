// Dead letters: a projection's queue a page at a time, one letter's event, error, attempts and
// times, and redrive of one letter, a stream or all, with the outcome watched until each letter
// has been applied (it leaves the queue) or failed again (permission dlq:admin throughout:
// `GET|POST /admin/projections/{name}/dead-letters…` on the dashboard).
import { useEffect, useRef, useState } from 'preact/hooks';
import { call } from '../api.js';
import { href } from '../route.js';
import { Confirm, ErrorBox, Json, Needs, Time, useLoad } from '../ui.jsx';

const PAGE = 50;
/// How long the outcome of a redrive is watched.
const WATCH_MS = 20000;

const base = (projection) => `/admin/projections/${encodeURIComponent(projection)}/dead-letters`;

export function DeadLetters({ route }) {
  const [, projection, id] = route.parts;
  return (
    <Needs permission="dlq:admin">
      {!projection && <Queues />}
      {projection && !id && <Queue projection={projection} />}
      {projection && id && <Letter projection={projection} id={id} />}
    </Needs>
  );
}

function Queues() {
  const health = useLoad(() => call('query', '/health', { okStatuses: [503] }), []);
  return (
    <section aria-labelledby="dlq-title">
      <h1 id="dlq-title">Dead letters</h1>
      <ErrorBox error={health.error} />
      {health.data && (
        <ul class="cards">
          {health.data.projections.map((p) => (
            <li key={p.name}>
              <a href={href(['dead-letters', p.name])}>{p.name}</a>{' '}
              <span class={p.dead_letters ? 'count bad' : 'count'}>{p.dead_letters}</span>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

/// Redrives `body` and watches the letters it named until each is applied or failed again.
function useRedrive(projection, onDone) {
  const [outcome, setOutcome] = useState(null);
  const timer = useRef(null);
  useEffect(() => () => clearTimeout(timer.current), []);

  const run = async (body, watched) => {
    setOutcome({ phase: 'sending', body });
    let marked;
    try {
      marked = (await call('query', `${base(projection)}/redrive`, { method: 'POST', body })).marked;
    } catch (error) {
      setOutcome({ phase: 'error', error });
      return;
    }
    const started = Date.now();
    const before = new Map(watched.map((l) => [l.id, l.attempts]));
    const check = async () => {
      let page;
      try {
        page = await call('query', base(projection), { query: { limit: 200 } });
      } catch (error) {
        setOutcome({ phase: 'error', error, marked });
        return;
      }
      const now = new Map(page.letters.map((l) => [l.id, l]));
      const applied = [];
      const failed = [];
      const waiting = [];
      for (const [id, attempts] of before) {
        const letter = now.get(id);
        if (!letter) applied.push(id);
        else if (letter.status !== 'redrive' && letter.attempts > attempts) failed.push(letter);
        else waiting.push(id);
      }
      const done = waiting.length === 0 || Date.now() - started > WATCH_MS;
      setOutcome({ phase: done ? 'done' : 'watching', marked, applied, failed, waiting });
      onDone();
      if (!done) timer.current = setTimeout(check, 700);
    };
    timer.current = setTimeout(check, 500);
  };
  return [outcome, run];
}

function Outcome({ outcome }) {
  if (!outcome) return null;
  if (outcome.phase === 'error') return <ErrorBox error={outcome.error} />;
  if (outcome.phase === 'sending') return <p role="status">Asking the projection to redrive…</p>;
  const { marked, applied, failed, waiting } = outcome;
  return (
    <div role="status" class={`outcome ${failed.length ? 'bad' : applied.length ? 'good' : ''}`}>
      <p>
        {marked} letter{marked === 1 ? '' : 's'} marked for redrive.
        {applied.length > 0 && <> <strong data-outcome="applied">{applied.length} applied</strong> (left the queue).</>}
        {failed.length > 0 && <> <strong data-outcome="failed">{failed.length} failed again</strong>: {failed[0].error}</>}
        {waiting.length > 0 && (outcome.phase === 'watching'
          ? <> {waiting.length} waiting for the projection…</>
          : <> {waiting.length} not picked up yet (is the projection running?).</>)}
      </p>
    </div>
  );
}

function Queue({ projection }) {
  const [after, setAfter] = useState([0]);
  const current = after[after.length - 1];
  const page = useLoad(() => call('query', base(projection), { query: { after: current, limit: PAGE } }), [projection, current]);
  const [confirm, setConfirm] = useState(null);
  const [outcome, redrive] = useRedrive(projection, page.reload);
  const letters = page.data ? page.data.letters : [];

  const ask = (what) => setConfirm(what);
  const go = () => {
    const { body, watched } = confirm;
    setConfirm(null);
    redrive(body, watched);
  };

  return (
    <section aria-labelledby="queue-title">
      <p class="crumbs"><a href={href(['dead-letters'])}>Dead letters</a> /</p>
      <div class="title-row">
        <h1 id="queue-title">{projection}</h1>
        {letters.length > 0 && (
          <button type="button" class="danger" onClick={() => ask({ title: `Redrive all ${page.data.total} dead letters of ${projection}?`, body: { all: true }, watched: letters })}>
            Redrive all
          </button>
        )}
      </div>
      <Outcome outcome={outcome} />
      <ErrorBox error={page.error} />
      {page.data && (
        <>
          <p class="muted">{page.data.total} in the queue</p>
          <table class="letters">
            <thead>
              <tr>
                <th scope="col" class="num">Id</th><th scope="col">Status</th><th scope="col">Stream</th>
                <th scope="col" class="num">Version</th><th scope="col">Event</th><th scope="col" class="num">Attempts</th>
                <th scope="col">Last failed</th><th scope="col">Error</th><th scope="col"><span class="sr-only">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              {letters.length === 0 && <tr><td colSpan={9} class="muted">The queue is empty.</td></tr>}
              {letters.map((l) => {
                const stream = `${l.event.stream.aggregate_type}/${l.event.stream.aggregate_id}`;
                return (
                  <tr key={l.id} data-letter={l.id}>
                    <td class="num"><a href={href(['dead-letters', projection, l.id])}>{l.id}</a></td>
                    <td><span class={`status ${l.status}`}>{l.status}</span></td>
                    <td><a href={href(['streams', l.event.stream.aggregate_type, l.event.stream.aggregate_id])}>{stream}</a></td>
                    <td class="num">{l.event.version}</td>
                    <td><code>{l.event.event_type}</code></td>
                    <td class="num">{l.attempts}</td>
                    <td><Time value={l.last_failed_at} /></td>
                    <td class="error-text">{l.error}</td>
                    <td class="actions">
                      <button type="button" onClick={() => ask({ title: `Redrive dead letter ${l.id}?`, body: { id: l.id }, watched: [l] })}>Redrive</button>
                      <button type="button" onClick={() => ask({ title: `Redrive every dead letter of ${stream}?`, body: { stream }, watched: letters.filter((x) => x.event.stream.aggregate_id === l.event.stream.aggregate_id && x.event.stream.aggregate_type === l.event.stream.aggregate_type) })}>Redrive stream</button>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <nav class="pager" aria-label="Pages">
            {after.length > 1 && <button type="button" onClick={() => setAfter(after.slice(0, -1))}>Previous</button>}
            {page.data.next_after !== null && <button type="button" onClick={() => setAfter([...after, page.data.next_after])}>Next</button>}
          </nav>
        </>
      )}
      <Confirm open={confirm !== null} title={confirm ? confirm.title : ''} confirmLabel="Redrive" onConfirm={go} onCancel={() => setConfirm(null)}>
        <p>
          The projection processes the letter{confirm && confirm.body.id ? '' : 's'} again. A letter applies only when it is the
          oldest of its stream; one that fails again goes back to the queue with one more attempt.
        </p>
      </Confirm>
    </section>
  );
}

function Letter({ projection, id }) {
  const letter = useLoad(() => call('query', `${base(projection)}/${encodeURIComponent(id)}`), [projection, id]);
  const [confirm, setConfirm] = useState(false);
  const [outcome, redrive] = useRedrive(projection, () => {});
  const l = letter.data;
  return (
    <section aria-labelledby="letter-title">
      <p class="crumbs"><a href={href(['dead-letters'])}>Dead letters</a> / <a href={href(['dead-letters', projection])}>{projection}</a> /</p>
      <div class="title-row">
        <h1 id="letter-title">Dead letter {id}</h1>
        {l && <button type="button" onClick={() => setConfirm(true)}>Redrive</button>}
      </div>
      <Outcome outcome={outcome} />
      <ErrorBox error={letter.error} />
      {l && (
        <>
          <dl class="facts">
            <dt>Status</dt><dd><span class={`status ${l.status}`}>{l.status}</span></dd>
            <dt>Error</dt><dd class="error-text">{l.error}</dd>
            <dt>Attempts</dt><dd>{l.attempts}</dd>
            <dt>First failed</dt><dd><Time value={l.first_failed_at} /></dd>
            <dt>Last failed</dt><dd><Time value={l.last_failed_at} /></dd>
            <dt>Event</dt><dd><code>{l.event.event_type}</code> v{l.event.version} of{' '}
              <a href={href(['streams', l.event.stream.aggregate_type, l.event.stream.aggregate_id])}>{l.event.stream.aggregate_type}/{l.event.stream.aggregate_id}</a>,
              position {l.event.position}</dd>
          </dl>
          <h2>Envelope</h2>
          <Json value={l.event} label="event envelope" />
        </>
      )}
      <Confirm open={confirm} title={`Redrive dead letter ${id}?`} confirmLabel="Redrive"
        onConfirm={() => { setConfirm(false); redrive({ id: Number(id) }, [l]); }} onCancel={() => setConfirm(false)}>
        <p>The projection processes this letter again.</p>
      </Confirm>
    </section>
  );
}
