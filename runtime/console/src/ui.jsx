// Small shared pieces: errors, JSON, times, a confirmation dialog, a sparkline, polling.
import { createContext } from 'preact';
import { useContext, useEffect, useRef, useState } from 'preact/hooks';
import { ApiError } from './api.js';

/// The signed-in caller: `{subject, roles, permissions, authenticated}` and `can(permission)`.
export const Session = createContext({ principal: null, can: () => false });

export function useSession() {
  return useContext(Session);
}

export function ErrorBox({ error }) {
  if (!error) return null;
  let hint = null;
  if (error instanceof ApiError) {
    if (error.status === 401) hint = 'Sign in with a token (top right).';
    else if (error.status === 403) hint = 'Your token lacks the permission this needs.';
    else if (error.status === 429 && error.retryAfter) hint = `Rate limited: retry in ${error.retryAfter} s.`;
  }
  return (
    <div class="error" role="alert">
      <strong>{error.status ? `${error.status} ${error.code}` : error.code || 'error'}</strong>: {error.message}
      {hint && <div class="hint">{hint}</div>}
    </div>
  );
}

export function Needs({ permission, children }) {
  const { can } = useSession();
  if (can(permission)) return children;
  return (
    <p class="notice" role="note">
      This needs the permission <code>{permission}</code>. Sign in with a token that grants it.
    </p>
  );
}

export function Json({ value, label }) {
  return (
    <pre class="json" tabIndex={0} aria-label={label || 'JSON'}>
      {JSON.stringify(value, null, 2)}
    </pre>
  );
}

export function Time({ value }) {
  if (!value) return <span class="muted">–</span>;
  const date = new Date(value);
  return <time datetime={date.toISOString()} title={date.toISOString()}>{date.toLocaleString()}</time>;
}

/// Runs `load` now and whenever `deps` change; `{data, error, loading, reload}`.
export function useLoad(load, deps) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    Promise.resolve()
      .then(load)
      .then(
        (data) => live && setState({ data, error: null, loading: false }),
        (error) => live && setState({ data: null, error, loading: false }),
      );
    return () => {
      live = false;
    };
  }, [...deps, tick]);
  return { ...state, reload: () => setTick((t) => t + 1) };
}

/// Calls `fn` every `ms` while mounted and `active`.
export function useInterval(fn, ms, active = true) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    if (!active) return undefined;
    const id = setInterval(() => saved.current(), ms);
    return () => clearInterval(id);
  }, [ms, active]);
}

/// A modal confirmation (native <dialog>: focus is trapped and Escape cancels).
export function Confirm({ open, title, children, confirmLabel, onConfirm, onCancel, busy }) {
  const ref = useRef(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) dialog.showModal();
    if (!open && dialog.open) dialog.close();
  }, [open]);
  return (
    <dialog ref={ref} aria-labelledby="confirm-title" onCancel={(e) => { e.preventDefault(); onCancel(); }}>
      <form method="dialog" onSubmit={(e) => { e.preventDefault(); onConfirm(); }}>
        <h2 id="confirm-title">{title}</h2>
        {children}
        <div class="actions">
          <button type="button" onClick={onCancel}>Cancel</button>
          <button type="submit" class="danger" disabled={busy}>{confirmLabel}</button>
        </div>
      </form>
    </dialog>
  );
}

/// A line of the last values, scaled to its own maximum.
export function Sparkline({ values, label, width = 120, height = 24 }) {
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - (v / max) * (height - 2) - 1).toFixed(1)}`).join(' ');
  const last = values.length ? values[values.length - 1] : 0;
  return (
    <svg class="sparkline" width={width} height={height} role="img" aria-label={`${label}: ${last.toFixed(1)} now, ${max.toFixed(1)} at most`}>
      <polyline points={points} fill="none" stroke="currentColor" stroke-width="1.5" />
    </svg>
  );
}

/// A trace id from a W3C `traceparent` (`00-<trace>-<span>-<flags>`).
export function traceId(traceparent) {
  const parts = (traceparent || '').split('-');
  return parts.length === 4 && /^[0-9a-f]{32}$/.test(parts[1]) ? parts[1] : null;
}
