// The live tail's rows, kept apart from the view so they can be tested without a browser
// (`test/tail.test.js`).

/// Rows kept on screen, and rows held while paused.
export const MAX_ROWS = 200;

/// Whether notification `n` belongs to the tail of `stream` (`type/id`, or an id of any type).
export function inStream(n, stream) {
  if (!stream) return true;
  return stream.includes('/') ? `${n.aggregate_type}/${n.aggregate_id}` === stream : n.aggregate_id === stream;
}

/// `list` (newest first, at most MAX_ROWS) with `row` added: merged into the row of its event
/// when there is one (other documents, or other projections, that event changed), else as a new
/// first row. Returns the new list and how many rows fell off the end.
export function addRow(list, row) {
  const at = list.findIndex((r) => !r.reset && r.event_id === row.event_id);
  if (at >= 0) {
    const old = list[at];
    const documents = [...old.documents, ...row.documents.filter((d) => !old.documents.includes(d))];
    if (documents.length === old.documents.length) return { list, dropped: 0 };
    const next = list.slice();
    next[at] = { ...old, documents, coalesced: old.coalesced || row.coalesced };
    return { list: next, dropped: 0 };
  }
  const next = [row, ...list];
  const dropped = Math.max(0, next.length - MAX_ROWS);
  return { list: dropped ? next.slice(0, MAX_ROWS) : next, dropped };
}

/// The row of one notification: its event, and the one document it changed.
// Whether `list` already has the row of `row`'s event: another document of a shown event joins its
// row even while the tail is paused, since it is not a new event.
export function shows(list, row) {
  return list.some((r) => !r.reset && r.event_id === row.event_id);
}

export function rowOf(n) {
  return { ...n, documents: [`${n.projection} · ${n.collection}/${n.id}`] };
}
