// Read models: the projections the dashboard serves, their collections, pages of documents with
// field filters (`GET /read-models`, `GET /read-models/{projection}/{collection}`), and for a
// searchable collection full-text search with filters, sort, highlights and facets
// (`GET /read-models/{projection}/{collection}/search`).
import { useEffect, useState } from 'preact/hooks';
import { call } from '../api.js';
import { go, href } from '../route.js';
import { ErrorBox, Json, Needs, useLoad } from '../ui.jsx';
import { fragmentParts } from '../highlight.js';

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
              <li key={c}>
                <a href={href(['read-models', p.name, c])}>{c}</a>
                {p.searchable && p.searchable[c] !== undefined && (
                  <> · <a href={href(['read-models', p.name, c], { mode: 'search' })}>search</a></>
                )}
              </li>
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

/// The declared search fields of a collection, null when it is not searchable, undefined until
/// the list of read models is in.
function useSearchFields(projection, collection) {
  const list = useLoad(() => call('query', '/read-models'), []);
  if (!list.data) return undefined;
  const p = list.data.projections.find((x) => x.name === projection);
  return (p && p.search_fields && p.search_fields[collection]) || null;
}

function Collection({ projection, collection, params }) {
  const fields = useSearchFields(projection, collection);
  const searching = params.get('mode') === 'search';
  return (
    <section aria-labelledby="coll-title">
      <p class="crumbs"><a href={href(['read-models'])}>Read models</a> / <a href={href(['read-models', projection])}>{projection}</a> /</p>
      <h1 id="coll-title">{collection}</h1>
      {fields && (
        <div class="filters" role="group" aria-label="Mode">
          <a class="chip" href={href(['read-models', projection, collection])} aria-current={searching ? undefined : 'true'}>Browse</a>
          <a class="chip" href={href(['read-models', projection, collection], { mode: 'search' })} aria-current={searching ? 'true' : undefined}>Search</a>
        </div>
      )}
      {searching && fields === null && <p class="notice" role="note">This collection is not searchable; browse it with filters.</p>}
      {searching
        ? fields && <Search projection={projection} collection={collection} params={params} fields={fields} />
        : <Browse projection={projection} collection={collection} params={params} />}
    </section>
  );
}

function Browse({ projection, collection, params }) {
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
    <>
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
    </>
  );
}

function Fragment({ text }) {
  return (
    <span class="fragment">
      {fragmentParts(text).map((p, i) => (p.marked ? <mark key={i}>{p.text}</mark> : p.text))}
    </span>
  );
}

function Search({ projection, collection, params, fields }) {
  const q = params.get('q') || '';
  const filterText = params.get('filter') || '';
  const sort = params.get('sort') || '';
  const cursor = params.get('cursor') || '';
  const [draft, setDraft] = useState({ q, filter: filterText, sort });
  useEffect(() => setDraft({ q, filter: filterText, sort }), [q, filterText, sort]);
  const text = fields.filter((f) => f.kind.type === 'text').map((f) => f.path);
  const facets = fields.filter((f) => f.facet).map((f) => f.path);
  const sortable = fields.filter((f) => f.kind.type !== 'text').map((f) => f.path);
  const result = useLoad(() => call('query', `/read-models/${encodeURIComponent(projection)}/${encodeURIComponent(collection)}/search`, {
    query: {
      ...parseFilters(filterText),
      q,
      sort,
      cursor,
      limit: PAGE,
      highlight: q ? text.join(',') : '',
      facets: facets.join(','),
    },
  }), [projection, collection, q, filterText, sort, cursor]);
  const at = (changes) => {
    const next = { mode: 'search', q, filter: filterText, sort, ...changes };
    return Object.fromEntries(Object.entries(next).filter(([, v]) => v));
  };
  const submit = (e) => {
    e.preventDefault();
    go(['read-models', projection, collection], at({ q: draft.q.trim(), filter: draft.filter.trim(), sort: draft.sort, cursor: '' }));
  };
  const withFilter = (field, value) => {
    const kept = filterText.split(/[\n,]/).map((l) => l.trim()).filter((l) => l && !l.startsWith(`${field}=`));
    return href(['read-models', projection, collection], at({ filter: [...kept, `${field}=${value}`].join(', '), cursor: '' }));
  };
  const data = result.data;

  return (
    <>
      <form class="inline search" role="search" onSubmit={submit}>
        <label>Search <input type="search" name="q" value={draft.q} size={30} placeholder={text.length ? `${text.join(', ')}` : 'words'}
          onInput={(e) => setDraft({ ...draft, q: e.currentTarget.value })} /></label>
        <label>Filter <input name="filter" value={draft.filter} size={30} placeholder="status=confirmed, total_cents[gte]=1000"
          onInput={(e) => setDraft({ ...draft, filter: e.currentTarget.value })} /></label>
        <label>Sort <select name="sort" value={draft.sort} onChange={(e) => setDraft({ ...draft, sort: e.currentTarget.value })}>
          <option value="">relevance</option>
          {sortable.flatMap((f) => [
            <option key={`${f}:asc`} value={`${f}:asc`}>{f} ascending</option>,
            <option key={`${f}:desc`} value={`${f}:desc`}>{f} descending</option>,
          ])}
        </select></label>
        <button type="submit">Search</button>
      </form>
      {text.length > 0 && (
        <p class="hint">
          Words, "phrases", prefix*, field:word, AND / OR / NOT. Full text: {text.map((f) => <code key={f}>{f} </code>)}
          {sortable.length > 0 && <> · filters on {sortable.map((f) => <code key={f}>{f} </code>)}(<code>=</code>, <code>[gte]=</code>, <code>[lt]=</code>, <code>[in]=a,b</code>)</>}
        </p>
      )}
      <ErrorBox error={result.error} />
      {data && (
        <>
          <p data-field="search-total">{data.total.relation === 'gte' && 'At least '}<strong>{data.total.value}</strong> document{data.total.value === 1 && data.total.relation === 'eq' ? '' : 's'} match</p>
          {data.facets && Object.entries(data.facets).map(([field, counts]) => (
            <div key={field} class="filters" role="group" aria-label={`Facet ${field}`}>
              <span class="muted">{field}:</span>
              {Object.entries(counts).map(([value, count]) => (
                <a key={value} class="chip" href={withFilter(field, value)} data-facet={`${field}=${value}`}>{value} ({count})</a>
              ))}
            </div>
          ))}
          <table class="hits">
            <thead><tr><th scope="col">Id</th><th scope="col" class="num">Score</th><th scope="col">Matches</th></tr></thead>
            <tbody>
              {data.hits.length === 0 && <tr><td colSpan={3} class="muted">No documents match</td></tr>}
              {data.hits.map((hit) => {
                const found = Object.entries(hit.highlights || {});
                return (
                  <tr key={hit.id} data-hit={hit.id}>
                    <th scope="row"><a href={href(['read-models', projection, collection, hit.id])}>{hit.id}</a></th>
                    <td class="num">{hit.score === undefined ? '–' : hit.score.toFixed(2)}</td>
                    <td>
                      {found.length === 0 && <code class="oneline">{JSON.stringify(hit.document)}</code>}
                      {found.map(([field, fragments]) => (
                        <div key={field}><span class="muted">{field}: </span>{fragments.map((f, i) => <Fragment key={i} text={f} />)}</div>
                      ))}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <nav class="pager" aria-label="Pages">
            {cursor && <a href={href(['read-models', projection, collection], at({ cursor: '' }))}>First page</a>}
            {data.next_cursor && <a href={href(['read-models', projection, collection], at({ cursor: data.next_cursor }))}>Next</a>}
          </nav>
        </>
      )}
    </>
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
