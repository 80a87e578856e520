// Read models: the projections the dashboard serves, their collections, and pages of
// documents with field filters (`GET /read-models`, `GET /read-models/{projection}/{collection}`).
import { useState } from 'preact/hooks';
import { call } from '../api.js';
import { go, href } from '../route.js';
import { ErrorBox, Json, Needs, useLoad } from '../ui.jsx';

const PAGE = 25;

export function ReadModels({ route }) {
  const [, projection, collection, id] = route.parts;
  return (
    <Needs permission="read-models:read">
      {!collection && <Projections selected={projection} />}
      {collection && !id && <Collection projection={projection} collection={collection} params={route.params} />}
      {collection && id && <Document projection={projection} collection={collection} id={id} />}
    </Needs>
  );
}

function Projections({ selected }) {
  const list = useLoad(() => call('query', '/read-models'), []);
  return (
    <section aria-labelledby="rm-title">
      <h1 id="rm-title">Read models</h1>
      <ErrorBox error={list.error} />
      {list.data && list.data.projections.map((p) => (
        <div class={`panel${p.name === selected ? ' selected' : ''}`} key={p.name}>
          <h2>{p.name}</h2>
          <p class="muted">checkpoint {p.checkpoint ?? '–'} · {p.health ? p.health.status : 'unknown'}</p>
          {p.collections.length === 0 && <p class="muted">No documents yet.</p>}
          <ul class="cards">
            {p.collections.map((c) => (
              <li key={c}><a href={href(['read-models', p.name, c])}>{c}</a></li>
            ))}
          </ul>
        </div>
      ))}
    </section>
  );
}

/// `field=value` lines into query parameters.
function parseFilters(text) {
  const filters = {};
  for (const line of text.split(/[\n,]/)) {
    const at = line.indexOf('=');
    if (at > 0) filters[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return filters;
}

function Collection({ projection, collection, params }) {
  const offset = Number(params.get('offset') || 0);
  const filterText = params.get('filter') || '';
  const [draft, setDraft] = useState(filterText);
  const page = useLoad(
    () => call('query', `/read-models/${encodeURIComponent(projection)}/${encodeURIComponent(collection)}`, {
      query: { ...parseFilters(filterText), limit: PAGE, offset },
    }),
    [projection, collection, offset, filterText],
  );
  const at = (o) => href(['read-models', projection, collection], { ...(filterText ? { filter: filterText } : {}), offset: o });

  return (
    <section aria-labelledby="coll-title">
      <p class="crumbs"><a href={href(['read-models'])}>Read models</a> / <a href={href(['read-models', projection])}>{projection}</a> /</p>
      <h1 id="coll-title">{collection}</h1>
      <form class="inline" onSubmit={(e) => { e.preventDefault(); go(['read-models', projection, collection], draft ? { filter: draft } : {}); }}>
        <label>Filter <input value={draft} placeholder="status=confirmed, customer=ada" size={40}
          onInput={(e) => setDraft(e.currentTarget.value)} /></label>
        <button type="submit">Apply</button>
      </form>
      <ErrorBox error={page.error} />
      {page.data && (
        <>
          <table>
            <thead><tr><th scope="col">Id</th><th scope="col">Document</th></tr></thead>
            <tbody>
              {page.data.items.length === 0 && <tr><td colSpan={2} class="muted">No documents</td></tr>}
              {page.data.items.map((item) => (
                <tr key={item.id}>
                  <th scope="row"><a href={href(['read-models', projection, collection, item.id])}>{item.id}</a></th>
                  <td><code class="oneline">{JSON.stringify(item.document)}</code></td>
                </tr>
              ))}
            </tbody>
          </table>
          <nav class="pager" aria-label="Pages">
            {offset > 0 && <a href={at(Math.max(0, offset - PAGE))}>Previous</a>}
            <span class="muted">documents {offset + 1}–{offset + page.data.items.length}</span>
            {page.data.next_offset !== null && page.data.next_offset !== undefined && <a href={at(page.data.next_offset)}>Next</a>}
          </nav>
        </>
      )}
    </section>
  );
}

function Document({ projection, collection, id }) {
  const doc = useLoad(
    () => call('query', `/read-models/${encodeURIComponent(projection)}/${encodeURIComponent(collection)}/${encodeURIComponent(id)}`),
    [projection, collection, id],
  );
  return (
    <section aria-labelledby="doc-title">
      <p class="crumbs">
        <a href={href(['read-models'])}>Read models</a> / <a href={href(['read-models', projection])}>{projection}</a> /{' '}
        <a href={href(['read-models', projection, collection])}>{collection}</a> /
      </p>
      <h1 id="doc-title"><code>{id}</code></h1>
      <ErrorBox error={doc.error} />
      {doc.data && <Json value={doc.data} label="document" />}
    </section>
  );
}
