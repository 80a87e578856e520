// Every request the console makes goes through `call`: to the dashboard that served the page
// (same origin), the command service or the schema registry, with the signed-in credential.
// All of them are documented, access-controlled endpoints of those services, declared in
// endpoints.js (any other is refused here); there is no console-only API.

import { endpointOf } from './endpoints.js';

const TOKEN_KEY = 'nexus.console.token';

let config = { title: 'nexus', command_url: null, registry_url: null, trace_url: null };
let token = sessionStorage.getItem(TOKEN_KEY) || '';

export function setConfig(value) {
  config = value;
}

export function getConfig() {
  return config;
}

export function setToken(value) {
  token = value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function hasToken() {
  return token !== '';
}

/// The signed-in credential, for a transport that carries it itself (the notifications socket
/// sends it in `Sec-WebSocket-Protocol`, never in the URL).
export function currentToken() {
  return token;
}

/// The base URL of a service, or null when the dashboard was not told about it.
export function serviceUrl(service) {
  if (service === 'query') return '';
  if (service === 'command') return config.command_url;
  if (service === 'registry') return config.registry_url;
  return null;
}

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const message = (body && (body.message || body.error)) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = (body && (body.error || body.error_code)) || 'error';
    this.body = body;
    this.retryAfter = retryAfter ? Number(retryAfter) : null;
  }
}

function queryString(query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === '') continue;
    if (Array.isArray(value)) value.forEach((v) => params.append(key, String(v)));
    else params.append(key, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

/// Calls `method path` on `service`; resolves to the parsed JSON body, rejects with ApiError.
/// `okStatuses` lists non-2xx statuses whose body is an answer (the health check's 503).
export async function call(service, path, { method = 'GET', query, body, okStatuses = [], signal } = {}) {
  if (!endpointOf(service, method, path)) {
    throw new ApiError(0, { error: 'undeclared', message: `${method} ${path} is not an endpoint the console declares (endpoints.js)` });
  }
  const base = serviceUrl(service);
  if (base === null || base === undefined) {
    throw new ApiError(0, { error: 'not_configured', message: `this console was not told where the ${service} is` });
  }
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(base + path + queryString(query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
      signal,
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, { error: 'unreachable', message: `the ${service} at ${base || location.origin} did not answer` });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { message: text.slice(0, 300) };
  }
  if (!response.ok && !okStatuses.includes(response.status)) {
    throw new ApiError(response.status, data, response.headers.get('retry-after'));
  }
  return data;
}

let commandDocument = null;

/// The command service's OpenAPI document, read once: which aggregates and sagas it serves.
export function commandDoc() {
  if (!commandDocument) {
    commandDocument = call('command', '/openapi.json').catch((err) => {
      commandDocument = null;
      throw err;
    });
  }
  return commandDocument;
}

/// The aggregate types and saga names a command service document lists.
export function servedBy(doc) {
  const paths = (doc && doc.paths) || {};
  const aggregates = Object.keys(paths)
    .map((path) => /^\/aggregates\/([^/{}]+)\/\{id\}$/.exec(path))
    .filter(Boolean)
    .map((m) => m[1]);
  const list = paths['/sagas/{saga}'];
  const param = list && list.get && (list.get.parameters || []).find((p) => p.name === 'saga');
  const sagas = (param && param.schema && param.schema.enum) || [];
  return { aggregates, sagas };
}
