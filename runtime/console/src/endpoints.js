// Every request the console may send: service, method and the path as its service's OpenAPI
// document names it. `call` (api.js) refuses any other, so this table is the console's whole
// reach; the browser test checks each entry against the documents `nexus up` serves, and every
// request the page made against this table.

export const ENDPOINTS = [
  // The query dashboard (the page's own origin): the page and its assets, which the browser
  // loads, then what the page asks.
  ['query', 'GET', '/console/'],
  ['query', 'GET', '/console/assets/{file}'],
  ['query', 'GET', '/console/config.json'],
  ['query', 'GET', '/access/me'],
  ['query', 'GET', '/health'],
  ['query', 'GET', '/read-models'],
  ['query', 'GET', '/read-models/{projection}/{collection}'],
  ['query', 'GET', '/read-models/{projection}/{collection}/search'],
  ['query', 'GET', '/read-models/{projection}/{collection}/{id}'],
  ['query', 'GET', '/temporal/events'],
  ['query', 'POST', '/admin/projections/{name}/replay'],
  ['query', 'GET', '/admin/projections/{name}/dead-letters'],
  ['query', 'POST', '/admin/projections/{name}/dead-letters/redrive'],
  ['query', 'GET', '/admin/projections/{name}/dead-letters/{id}'],
  // Loaded as a script and opened as a WebSocket by the Live view, not through `call`.
  ['query', 'GET', '/notifications/client.js'],
  ['query', 'GET', '/notifications/ws'],
  // The command service.
  ['command', 'GET', '/openapi.json'],
  ['command', 'GET', '/temporal/state/{aggregate}/{id}'],
  ['command', 'GET', '/sagas/{saga}'],
  ['command', 'GET', '/sagas/{saga}/{id}'],
  ['command', 'POST', '/sagas/{saga}/{id}/retry'],
  ['command', 'POST', '/sagas/{saga}/{id}/abort'],
  // The schema registry.
  ['registry', 'GET', '/subjects'],
  ['registry', 'GET', '/subjects/{subject}/versions'],
  ['registry', 'GET', '/subjects/{subject}/versions/{version}'],
  ['registry', 'POST', '/compatibility/subjects/{subject}/versions'],
  ['registry', 'POST', '/compatibility/subjects/{subject}/versions/{version}'],
];

/// A path template as a pattern: each `{name}` is one non-empty path segment.
export function templatePattern(template) {
  const escaped = template.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+');
  return new RegExp(`^${escaped}$`);
}

/// The entry of ENDPOINTS that `method path` (a path without its query) on `service` is, or
/// undefined. A literal segment wins over a parameter (`…/search` is the search, not a document).
export function endpointOf(service, method, path) {
  const found = ENDPOINTS.filter(([s, m, t]) => s === service && m === method && templatePattern(t).test(path));
  const literal = (t) => t.split('/').filter((seg) => !seg.startsWith('{')).length;
  return found.sort((a, b) => literal(b[2]) - literal(a[2]))[0];
}
