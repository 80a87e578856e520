// The live tail's rows: one per event, merged across documents and projections, bounded.
// Run with `npm test` (node's own test runner; no dependencies).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_ROWS, addRow, inStream, rowOf, shows } from '../src/tail.js';

const note = (event, projection, collection, id, extra = {}) => ({
  projection, collection, id, event_id: `e-${event}`, log_position: event,
  aggregate_type: 'order', aggregate_id: `o-${event % 3}`, aggregate_version: 1, ...extra,
});

test('the documents an event changed, in any projection, are one row', () => {
  let { list } = addRow([], rowOf(note(1, 'orders', 'orders', 'o-1')));
  ({ list } = addRow(list, rowOf(note(1, 'orders', 'customers', 'ada'))));
  ({ list } = addRow(list, rowOf(note(1, 'shipments', 'shipments', 'o-1'))));
  assert.equal(list.length, 1);
  assert.deepEqual(list[0].documents, ['orders · orders/o-1', 'orders · customers/ada', 'shipments · shipments/o-1']);
  // The same document again (a replay after a reconnect) changes nothing.
  const again = addRow(list, rowOf(note(1, 'orders', 'orders', 'o-1')));
  assert.equal(again.list, list);
});

test('newer events go on top, and the list keeps only the newest rows', () => {
  let list = [];
  let dropped = 0;
  for (let event = 1; event <= MAX_ROWS + 5; event++) {
    const added = addRow(list, rowOf(note(event, 'orders', 'orders', `o-${event}`)));
    list = added.list;
    dropped += added.dropped;
  }
  assert.equal(list.length, MAX_ROWS);
  assert.equal(dropped, 5);
  assert.equal(list[0].event_id, `e-${MAX_ROWS + 5}`);
  assert.equal(list[MAX_ROWS - 1].event_id, 'e-6');
});

test('a stream is named by type and id, or by id alone', () => {
  const n = note(4, 'orders', 'orders', 'o-1');
  assert.equal(inStream(n, ''), true);
  assert.equal(inStream(n, 'order/o-1'), true);
  assert.equal(inStream(n, 'o-1'), true);
  assert.equal(inStream(n, 'invoice/o-1'), false);
  assert.equal(inStream(n, 'order/o-2'), false);
});

test('a paused tail holds new events only: another document of a shown event is not new', () => {
  const { list } = addRow([], rowOf(note(1, 'orders', 'orders', 'o-1')));
  assert.equal(shows(list, rowOf(note(1, 'orders', 'customers', 'ada'))), true);
  assert.equal(shows(list, rowOf(note(2, 'orders', 'orders', 'o-1'))), false);
  assert.equal(shows([{ reset: true, key: 'r' }], rowOf(note(1, 'orders', 'orders', 'o-1'))), false);
});
