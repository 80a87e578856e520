// Sagas: the instances of each saga the command service runs, by status; one instance's steps
// with attempts and errors, and its history; retry or abort a stuck instance after a
// confirmation (`GET /sagas/{saga}[/{id}]` with aggregates:read, `POST …/retry|abort` with
// dlq:admin, on the command service; the service takes both for a stuck instance only).
import { useState } from 'preact/hooks';
import { call, commandDoc, servedBy } from '../api.js';
import { href } from '../route.js';
import { Confirm, ErrorBox, Json, Needs, Time, useInterval, useLoad, useSession } from '../ui.jsx';

// How long the page follows an instance after a retry or abort, whatever its status reads.
const FOLLOW_AFTER_ACTION_MS = 30000;
const STATUSES = ['running', 'compensating', 'stuck', 'completed', 'compensated', 'timed_out', 'aborted'];
const PAGE = 50;
/// How often an instance the runner is still working on is read again.
const POLL_MS = 1000;
const path = (saga, id) => `/sagas/${encodeURIComponent(saga)}${id ? `/${encodeURIComponent(id)}` : ''}`;

export function Sagas({ route }) {
  const [, saga, id] = route.parts;
  return (
    <Needs permission="aggregates:read">
      {!saga && <SagaList />}
      {saga && !id && <Instances saga={saga} status={route.params.get('status') || ''} offset={Number(route.params.get('offset') || 0)} />}
      {saga && id && <Instance saga={saga} id={id} />}
    </Needs>
  );
}

function SagaList() {
  const sagas = useLoad(async () => servedBy(await commandDoc()).sagas, []);
  return (
    <section aria-labelledby="sagas-title">
      <h1 id="sagas-title">Sagas</h1>
      <ErrorBox error={sagas.error} />
      {sagas.data && sagas.data.length === 0 && <p class="muted">The command service runs no sagas.</p>}
      {sagas.data && (
        <ul class="cards">
          {sagas.data.map((s) => (
            <li key={s}><a href={href(['sagas', s])}>{s}</a> · <a href={href(['sagas', s], { status: 'stuck' })}>stuck</a></li>
          ))}
        </ul>
      )}
    </section>
  );
}

function Instances({ saga, status, offset }) {
  const page = useLoad(() => call('command', path(saga), { query: { status, limit: PAGE, offset } }), [saga, status, offset]);
  const at = (params) => href(['sagas', saga], params);
  return (
    <section aria-labelledby="instances-title">
      <p class="crumbs"><a href={href(['sagas'])}>Sagas</a> /</p>
      <h1 id="instances-title">{saga}</h1>
      <div class="filters" role="group" aria-label="Status">
        <a class="chip" href={at({})} aria-current={status === '' ? 'true' : undefined}>all</a>
        {STATUSES.map((s) => (
          <a key={s} class="chip" href={at({ status: s })} aria-current={s === status ? 'true' : undefined}>{s.replace('_', ' ')}</a>
        ))}
      </div>
      <ErrorBox error={page.error} />
      {page.data && (
        <>
          <table class="sagas">
            <thead>
              <tr>
                <th scope="col">Instance</th><th scope="col">Status</th><th scope="col">Correlation key</th>
                <th scope="col">Step</th><th scope="col">Reason</th><th scope="col">Started</th><th scope="col">Updated</th>
              </tr>
            </thead>
            <tbody>
              {page.data.items.length === 0 && <tr><td colSpan={7} class="muted">No instances{status ? ` ${status.replace('_', ' ')}` : ''}.</td></tr>}
              {page.data.items.map((i) => (
                <tr key={i.id} data-saga-status={i.status}>
                  <th scope="row"><a href={href(['sagas', saga, i.id])}><code class="id">{i.id}</code></a></th>
                  <td><span class={`status ${i.status}`}>{i.status}</span></td>
                  <td>{i.correlation_key}</td>
                  <td>{i.current_step || <span class="muted">–</span>}</td>
                  <td class="error-text">{i.reason || ''}</td>
                  <td><Time value={i.started_at} /></td>
                  <td><Time value={i.updated_at} /></td>
                </tr>
              ))}
            </tbody>
          </table>
          <nav class="pager" aria-label="Pages">
            {offset > 0 && <a href={at({ ...(status ? { status } : {}), offset: Math.max(0, offset - PAGE) })}>Previous</a>}
            {page.data.next_offset !== null && <a href={at({ ...(status ? { status } : {}), offset: page.data.next_offset })}>Next</a>}
          </nav>
        </>
      )}
    </section>
  );
}

function Instance({ saga, id }) {
  const doc = useLoad(() => call('command', path(saga, id)), [saga, id]);
  const { can } = useSession();
  const [action, setAction] = useState(null);
  const [reason, setReason] = useState('');
  const [outcome, setOutcome] = useState({ data: null, error: null, busy: false });
  const [open, setOpen] = useState(null);
  const d = doc.data;
  // While the runner works on it (after a retry, say), follow it to where it ends. Right after an
  // action the status read may still be the old one (the runner records the change a moment
  // later), so the page also follows for a bounded while after it.
  const [followUntil, setFollowUntil] = useState(0);
  const working = Boolean(d && (['running', 'compensating'].includes(d.status) || Date.now() < followUntil));
  useInterval(doc.reload, POLL_MS, working);

  const act = async () => {
    const which = action;
    setAction(null);
    setOutcome({ data: null, error: null, busy: true });
    try {
      const data = await call('command', `${path(saga, id)}/${which}`, {
        method: 'POST',
        body: which === 'abort' ? { reason } : undefined,
      });
      setOutcome({ data: { ...data, action: which }, error: null, busy: false });
      setFollowUntil(Date.now() + FOLLOW_AFTER_ACTION_MS);
      doc.reload();
    } catch (error) {
      setOutcome({ data: null, error, busy: false });
    }
  };

  return (
    <section aria-labelledby="instance-title">
      <p class="crumbs"><a href={href(['sagas'])}>Sagas</a> / <a href={href(['sagas', saga])}>{saga}</a> /</p>
      <div class="title-row">
        <h1 id="instance-title">{saga} <code class="id">{id}</code></h1>
        {d && can('dlq:admin') && (
          <>
            <button type="button" disabled={d.status !== 'stuck' || outcome.busy} onClick={() => setAction('retry')}
              title={d.status === 'stuck' ? undefined : 'Only a stuck instance can be retried'}>Retry</button>
            <button type="button" class="danger" disabled={d.status !== 'stuck' || outcome.busy}
              title={d.status === 'stuck' ? undefined : 'Only a stuck instance can be aborted'}
              onClick={() => setAction('abort')}>Abort…</button>
          </>
        )}
      </div>
      <ErrorBox error={outcome.error} />
      {outcome.data && (
        <p role="status" class="outcome good" data-outcome={outcome.data.action}>
          {outcome.data.action === 'retry' ? 'Retry recorded' : 'Abort recorded'}: the instance is now{' '}
          <strong>{outcome.data.status}</strong> (version {outcome.data.version}).
        </p>
      )}
      <ErrorBox error={doc.error} />
      {d && (
        <>
          <dl class="facts">
            <dt>Status</dt><dd><span class={`status ${d.status}`} data-field="saga-status">{d.status}</span>{d.timed_out ? ' (timed out)' : ''}
              {working && <span class="muted"> · read again every {POLL_MS / 1000} s</span>}</dd>
            {d.reason && <><dt>Reason</dt><dd class="error-text">{d.reason}</dd></>}
            <dt>Correlation key</dt><dd>{d.correlation_key}</dd>
            <dt>Definition</dt><dd>version {d.definition_version}</dd>
            <dt>Started</dt><dd><Time value={d.started_at} /></dd>
            <dt>Updated</dt><dd><Time value={d.updated_at} /></dd>
            {d.deadline && <><dt>Deadline</dt><dd><Time value={d.deadline} /></dd></>}
            {d.next_due && <><dt>Next due</dt><dd><Time value={d.next_due} /></dd></>}
          </dl>
          <h2>Steps</h2>
          <table class="steps">
            <thead>
              <tr><th scope="col">Step</th><th scope="col">Status</th><th scope="col" class="num">Attempts</th><th scope="col">Last error</th>
                <th scope="col">Started</th><th scope="col">Finished</th><th scope="col">Compensation</th></tr>
            </thead>
            <tbody>
              {d.steps.map((s, index) => (
                <tr key={s.name} class={index === d.current_step ? 'current' : undefined}>
                  <th scope="row">{s.name}</th>
                  <td><span class={`status ${s.status}`}>{s.status}</span>{s.outcome_unknown ? ' (outcome unknown)' : ''}</td>
                  <td class="num">{s.attempts}</td>
                  <td class="error-text">{s.last_error || ''}</td>
                  <td><Time value={s.started_at} /></td>
                  <td><Time value={s.finished_at} /></td>
                  <td><Compensation value={s.compensation} /></td>
                </tr>
              ))}
            </tbody>
          </table>
          <h2>History{d.history_truncated ? ' (first events)' : ''}</h2>
          <table class="history">
            <thead><tr><th scope="col" class="num">Version</th><th scope="col">Event</th><th scope="col">Recorded</th><th scope="col"><span class="sr-only">Data</span></th></tr></thead>
            <tbody>
              {(d.history || []).map((e) => [
                <tr key={e.version}>
                  <td class="num">{e.version}</td>
                  <td><code>{e.type}</code></td>
                  <td><Time value={e.recorded_at} /></td>
                  <td><button type="button" aria-expanded={open === e.version} onClick={() => setOpen(open === e.version ? null : e.version)}>{open === e.version ? 'Hide' : 'Data'}</button></td>
                </tr>,
                open === e.version && <tr key={`${e.version}-data`} class="detail"><td colSpan={4}><Json value={e.data} label="event data" /></td></tr>,
              ])}
            </tbody>
          </table>
          <h2>Input</h2>
          <Json value={d.input} label="saga input" />
        </>
      )}
      <Confirm open={action === 'retry'} title="Retry this saga?" confirmLabel="Retry" onConfirm={act} onCancel={() => setAction(null)}>
        <p>The runner tries the stuck compensation again.</p>
      </Confirm>
      <Confirm open={action === 'abort'} title="Abort this saga?" confirmLabel="Abort" onConfirm={act} onCancel={() => setAction(null)}>
        <p>The instance stops for good; nothing more is compensated.</p>
        <label>Reason <input value={reason} required maxLength={1000} onInput={(e) => setReason(e.currentTarget.value)} /></label>
      </Confirm>
    </section>
  );
}

/// A step's compensation: its status and attempts, the last error, and the command it sends.
function Compensation({ value }) {
  if (!value) return <span class="muted">–</span>;
  const command = value.command && value.command.command;
  return (
    <div class="compensation" data-compensation={value.status}>
      <span class={`status ${value.status}`}>{value.status.replace('_', ' ')}</span>
      {' '}<span class="muted">{value.attempts} attempt{value.attempts === 1 ? '' : 's'}{value.outcome_unknown ? ', outcome unknown' : ''}</span>
      {value.command && <div><code>{value.command.aggregate}/{value.command.id}</code>{command && command.type ? <> <code>{command.type}</code></> : null}</div>}
      {value.last_error && <div class="error-text">{value.last_error}</div>}
      {value.retry_at && <div class="muted">next attempt <Time value={value.retry_at} /></div>}
    </div>
  );
}
