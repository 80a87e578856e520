import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { call, commandDoc, getConfig, hasToken, servedBy, setToken } from './api.js';
import { href, useRoute } from './route.js';
import { ErrorBox, Session } from './ui.jsx';
import { Streams } from './views/streams.jsx';
import { Projections } from './views/projections.jsx';
import { ReadModels } from './views/readmodels.jsx';
import { DeadLetters } from './views/deadletters.jsx';
import { Schemas } from './views/schemas.jsx';
import { Sagas } from './views/sagas.jsx';
import { Live } from './views/live.jsx';

const SECTIONS = [
  { key: 'projections', label: 'Projections', view: Projections },
  { key: 'streams', label: 'Streams', view: Streams },
  { key: 'live', label: 'Live', view: Live },
  { key: 'read-models', label: 'Read models', view: ReadModels },
  { key: 'dead-letters', label: 'Dead letters', view: DeadLetters },
  { key: 'sagas', label: 'Sagas', view: Sagas, needs: 'sagas' },
  { key: 'schemas', label: 'Schemas', view: Schemas, needs: 'registry_url' },
];

export function App() {
  const route = useRoute();
  const config = getConfig();
  const [principal, setPrincipal] = useState(null);
  const [authError, setAuthError] = useState(null);
  const [version, setVersion] = useState(0);
  const [served, setServed] = useState({ aggregates: [], sagas: [] });

  useEffect(() => {
    if (!config.command_url) return;
    commandDoc().then((doc) => setServed(servedBy(doc)), () => {});
  }, []);

  useEffect(() => {
    call('query', '/access/me').then(
      (p) => {
        setPrincipal(p);
        setAuthError(null);
      },
      (err) => {
        setPrincipal(null);
        setAuthError(err);
      },
    );
  }, [version]);

  const session = useMemo(
    () => ({
      principal,
      can: (permission) => Boolean(principal && principal.permissions.includes(permission)),
    }),
    [principal],
  );
  const available = { ...config, sagas: served.sagas.length > 0 };
  const sections = SECTIONS.filter((s) => !s.needs || available[s.needs]);
  const current = sections.find((s) => s.key === route.parts[0]) || sections[0];
  const View = current.view;

  useEffect(() => {
    document.title = `${current.label} · Nexus console · ${config.title}`;
  }, [current, config.title]);

  return (
    <Session.Provider value={session}>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); document.getElementById('main').focus(); }}>Skip to content</a>
      <header>
        <div class="brand">Nexus <span class="muted">{config.title}</span></div>
        <nav aria-label="Sections">
          <ul>
            {sections.map((s) => (
              <li key={s.key}>
                <a href={href([s.key])} aria-current={s === current ? 'page' : undefined}>{s.label}</a>
              </li>
            ))}
          </ul>
        </nav>
        <SignIn principal={principal} error={authError} onChange={() => setVersion((v) => v + 1)} />
      </header>
      <main id="main" tabIndex={-1}>
        <View route={route} key={`${current.key}-${version}`} />
      </main>
    </Session.Provider>
  );
}

function SignIn({ principal, error, onChange }) {
  const [open, setOpen] = useState(false);
  const [value, setValue] = useState('');
  const input = useRef(null);
  useEffect(() => {
    if (open && input.current) input.current.focus();
  }, [open]);

  const submit = (e) => {
    e.preventDefault();
    setToken(value);
    setValue('');
    setOpen(false);
    onChange();
  };
  const signOut = () => {
    setToken('');
    onChange();
  };

  return (
    <div class="signin">
      {principal && (
        <span class="who" title={principal.permissions.join(', ')}>
          {principal.authenticated ? principal.subject : 'anonymous'}
          {principal.roles.length > 0 && <span class="muted"> ({principal.roles.join(', ')})</span>}
        </span>
      )}
      {error && hasToken() && <ErrorBox error={error} />}
      {hasToken() ? (
        <button type="button" onClick={signOut}>Sign out</button>
      ) : (
        <button type="button" aria-expanded={open} onClick={() => setOpen(!open)}>Sign in</button>
      )}
      {open && (
        <form class="token-form" onSubmit={submit} aria-label="Sign in with a token">
          <label>
            Token or API key
            <input ref={input} type="password" name="token" autocomplete="off" value={value}
              onInput={(e) => setValue(e.currentTarget.value)} required />
          </label>
          <p class="hint">Kept in this tab only. <code>nexus token issue --role admin</code> prints one for <code>nexus up</code>.</p>
          <button type="submit">Sign in</button>
        </form>
      )}
    </div>
  );
}
