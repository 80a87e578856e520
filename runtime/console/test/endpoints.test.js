// The console's declared reach: which requests `call` lets through.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ENDPOINTS, endpointOf } from '../src/endpoints.js';

test('a request is the endpoint its service, method and path name', () => {
  assert.deepEqual(endpointOf('query', 'GET', '/read-models/orders/orders/o-1'), ['query', 'GET', '/read-models/{projection}/{collection}/{id}']);
  // A literal segment wins over a parameter.
  assert.deepEqual(endpointOf('query', 'GET', '/read-models/orders/orders/search'), ['query', 'GET', '/read-models/{projection}/{collection}/search']);
  assert.deepEqual(endpointOf('command', 'POST', '/sagas/fulfilment/0c1d/retry'), ['command', 'POST', '/sagas/{saga}/{id}/retry']);
  // An encoded slash stays inside its segment.
  assert.ok(endpointOf('registry', 'GET', '/subjects/a%2Fb/versions/2'));
});

test('anything else is refused: another method, service, path or an empty segment', () => {
  assert.equal(endpointOf('query', 'DELETE', '/read-models/orders/orders/o-1'), undefined);
  assert.equal(endpointOf('command', 'GET', '/read-models'), undefined);
  assert.equal(endpointOf('query', 'GET', '/metrics'), undefined);
  assert.equal(endpointOf('query', 'GET', '/read-models/orders//o-1'), undefined);
  assert.equal(endpointOf('command', 'POST', '/sagas/fulfilment/x/retry/again'), undefined);
});

test('each endpoint is declared once', () => {
  const keys = ENDPOINTS.map((e) => e.join(' '));
  assert.equal(new Set(keys).size, keys.length);
});
