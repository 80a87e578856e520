// Hash routes (`#/streams/order/o-1?v=3`), so the dashboard serves one page and links work
// with the keyboard, the back button and bookmarks.
import { useEffect, useState } from 'preact/hooks';

export function parseHash(hash) {
  const text = (hash || '').replace(/^#\/?/, '');
  const [path, search = ''] = text.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(search) };
}

export function href(parts, params) {
  const path = parts.map((p) => encodeURIComponent(String(p))).join('/');
  const search = params ? new URLSearchParams(params).toString() : '';
  return `#/${path}${search ? `?${search}` : ''}`;
}

export function go(parts, params) {
  location.hash = href(parts, params);
}

export function useRoute() {
  const [route, setRoute] = useState(() => parseHash(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseHash(location.hash));
    addEventListener('hashchange', changed);
    return () => removeEventListener('hashchange', changed);
  }, []);
  return route;
}
