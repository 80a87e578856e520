// The console in headless Chromium against a running `nexus up --demo` (started by
// tests/it/console.rs, which passes everything through the environment). Each step drives the
// page as an operator would — links, buttons, the keyboard — and waits for what the page shows;
// screenshots go to NEXUS_CONSOLE_SCREENSHOTS. Exits non-zero on the first failed step.
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  STEP_MS, allowedOrigin, api, command, env, query, registry, requireModule, shots, step, token, unexpectedErrors,
} from './common.mjs';
import { ENDPOINTS, endpointOf } from '../../../runtime/console/src/endpoints.js';

const { chromium } = requireModule('playwright-core');
const readerToken = env('NEXUS_CONSOLE_READER_TOKEN');
const demo = env('NEXUS_CONSOLE_DEMO_DIR');

const browser = await chromium.launch({
  executablePath: env('NEXUS_CONSOLE_CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
});
let failed = false;
const external = [];
const requested = new Set();
const consoleErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 800 } });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  // Nothing but the three services: any other request would be a leak (the CSP forbids it too).
  page.on('request', (r) => {
    const url = new URL(r.url());
    if (!allowedOrigin(r.url())) external.push(r.url());
    else requested.add(`${r.method()} ${url.origin}${url.pathname}`);
  });
  page.on('websocket', (ws) => {
    const url = new URL(ws.url());
    url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    requested.add(`GET ${url.origin}${url.pathname}`);
  });
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`) });
  // A section of the navigation, by its exact name (views have links that contain it).
  const section = (name) => page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name, exact: true }).click();

  await step('the console loads and a token signs in', async () => {
    const response = await page.goto(`${query}/console/`);
    const csp = response.headers()['content-security-policy'];
    if (!csp || !csp.includes("default-src 'none'")) throw new Error(`no strict CSP: ${csp}`);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByLabel('Token or API key').fill(token);
    await page.getByLabel('Token or API key').press('Enter');
    await page.locator('.who', { hasText: 'admin' }).waitFor();
  });

  await step('the keyboard reaches the sections', async () => {
    await page.reload(); // the token stays in the tab's session storage
    await page.locator('.who', { hasText: 'admin' }).waitFor();
    await page.keyboard.press('Tab'); // the skip link
    await page.keyboard.press('Tab'); // the first section
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => document.activeElement.textContent);
    if (focused !== 'Streams') throw new Error(`the third Tab reached ${focused}`);
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => location.hash === '#/streams');
  });

  let stream;
  await step('browse to an order and see its events', async () => {
    await page.getByRole('link', { name: 'order', exact: true }).click();
    const first = page.locator('table tbody tr th a').first();
    await first.waitFor();
    stream = await first.textContent();
    await first.click();
    await page.locator('tr[data-event-type="OrderPlaced"]').waitFor();
    await page.locator('tr[data-event-type="ItemAdded"]').first().waitFor();
    const rows = await page.locator('table.events tbody tr').count();
    if (rows < 3) throw new Error(`only ${rows} events shown for ${stream}`);
    await shot('stream');
  });

  await step('see the state at a version and the difference between two versions', async () => {
    await page.locator('tr[data-event-type="OrderPlaced"]').getByRole('button', { name: 'State' }).click();
    await page.locator('[data-field="state-version"]', { hasText: 'Version 1' }).waitFor();
    await page.getByRole('button', { name: 'Compare' }).click();
    await page.locator('table.changes tbody tr').first().waitFor();
    const changed = await page.locator('table.changes tbody').textContent();
    if (!/\/(items|lines|status|total)/.test(changed)) throw new Error(`no changed field: ${changed}`);
    await shot('stream-diff');
  });

  await step("watch the live tail receive a new command's event, follow one stream, pause and resume it", async () => {
    await section('Live');
    await page.locator('[data-field="live-status"]', { hasText: 'open' }).waitFor();
    const suffix = Date.now().toString(36);
    const id = `live-${suffix}`;
    const other = `live-other-${suffix}`;
    const rows = `tr[data-stream="order/${id}"]`;
    const count = () => page.locator(rows).count();
    await api('POST', `${command}/commands/order/${id}`, { type: 'PlaceOrder', customer: 'ada' });
    // No reload: the notifications bring the row, with the documents the event changed (each
    // document's notification is a frame of its own, so the row may show one before the other).
    await page.locator(rows).waitFor();
    try {
      await page.locator(rows, { hasText: `orders · orders/${id}` }).filter({ hasText: 'orders · customers/ada' }).waitFor();
    } catch (err) {
      throw new Error(`the row shows ${await page.locator(rows).textContent()}: ${err.message}`);
    }
    if ((await count()) !== 1) throw new Error(`the event shows as ${await count()} rows`);
    // One stream's tail: another stream's event does not show, this one's does.
    await page.getByLabel('Stream', { exact: true }).fill(`order/${id}`);
    await page.getByRole('button', { name: 'Follow' }).click();
    await page.waitForFunction(() => location.hash.includes('stream='));
    await api('POST', `${command}/commands/order/${other}`, { type: 'PlaceOrder', customer: 'ada' });
    await api('POST', `${command}/commands/order/${id}`, { type: 'AddItem', sku: 'espresso', quantity: 2, unit_price_cents: 250 });
    await page.waitForFunction(([s, n]) => document.querySelectorAll(s).length === n, [rows, 2]);
    if (await page.locator(`tr[data-stream="order/${other}"]`).count()) throw new Error('the stream tail showed another stream');
    // Paused, a new event is held, not shown; resuming shows it.
    await page.getByRole('button', { name: 'Pause' }).click();
    await api('POST', `${command}/commands/order/${id}`, { type: 'AddItem', sku: 'croissant', quantity: 1, unit_price_cents: 320 });
    await page.getByRole('button', { name: /^Resume \(1 new\)/ }).waitFor();
    if ((await count()) !== 2) throw new Error('a paused tail showed a new event');
    await page.getByRole('button', { name: /^Resume/ }).click();
    await page.waitForFunction(([s, n]) => document.querySelectorAll(s).length === n, [rows, 3]);
    // An event two projections apply is one row with the documents of both.
    await api('POST', `${command}/commands/order/${id}`, { type: 'ConfirmOrder' });
    await page.locator(rows, { hasText: `shipments · shipments/${id}` }).filter({ hasText: `orders · orders/${id}` }).waitFor();
    if ((await count()) !== 4) throw new Error(`the stream tail shows ${await count()} rows for 4 events`);
    await shot('live');
  });

  await step("see each projection's lag", async () => {
    await section('Projections');
    const row = page.locator('tr[data-projection="orders"]');
    await row.waitFor();
    const lag = await row.locator('[data-field="lag-events"]').textContent();
    if (!/^\d+$/.test(lag.trim())) throw new Error(`lag shows ${lag}`);
    await row.locator('[data-field="lag-seconds"]').waitFor();
    await page.locator('tr[data-projection="shipments"]').waitFor();
    await page.waitForTimeout(2500); // a second sample draws the throughput line
    await shot('projections');
  });

  await step('rebuild a projection as of now, after confirming', async () => {
    await page.locator('tr[data-projection="orders"]').getByRole('button', { name: 'Rebuild…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByRole('button', { name: 'Rebuild' }).click();
    await dialog.getByRole('status', { hasText: 'events applied' }).waitFor();
    await dialog.getByRole('button', { name: 'Close' }).click();
  });

  await step('search a read model, narrow it by a facet, and see the matches highlighted', async () => {
    await section('Read models');
    await page.locator('.panel', { has: page.getByRole('heading', { name: 'orders', exact: true }) })
      .getByRole('link', { name: 'search' }).click();
    await page.getByLabel('Search', { exact: true }).fill('ada');
    await page.getByRole('button', { name: 'Search', exact: true }).click();
    await page.locator('[data-field="search-total"]').waitFor();
    const marked = page.locator('tr[data-hit] mark', { hasText: /^ada$/i }).first();
    await marked.waitFor();
    const chip = page.locator('[data-facet="status=confirmed"]');
    const count = Number(/\((\d+)\)/.exec(await chip.textContent())[1]);
    const before = Number(await page.locator('[data-field="search-total"] strong').textContent());
    if (!(count >= 1 && before > count)) throw new Error(`ada: ${before} matches, ${count} confirmed`);
    await chip.click();
    await page.locator('[data-field="search-total"] strong', { hasText: new RegExp(`^${count}$`) }).waitFor();
    if ((await page.getByLabel('Filter', { exact: true }).inputValue()) !== 'status=confirmed') throw new Error('the facet did not become a filter');
    if ((await page.locator('tr[data-hit]').count()) !== count) throw new Error('the page shows other hits than the total');
    await shot('search');
  });

  await step('force a dead letter, redrive it from the console and see it applied', async () => {
    writeFileSync(join(demo, 'courier-down'), 'down\n');
    const id = `dl-${Date.now().toString(36)}`;
    await api('POST', `${command}/commands/order/${id}`, { type: 'PlaceOrder', customer: 'ada' });
    await api('POST', `${command}/commands/order/${id}`, { type: 'AddItem', sku: 'espresso', quantity: 1, unit_price_cents: 250 });
    await api('POST', `${command}/commands/order/${id}`, { type: 'ConfirmOrder' });
    await section('Dead letters');
    await page.getByRole('link', { name: 'shipments' }).click();
    const row = page.locator('tr', { has: page.getByRole('link', { name: `order/${id}` }) });
    const deadline = Date.now() + 15000;
    while (!(await row.count())) {
      if (Date.now() > deadline) throw new Error(`no dead letter for ${id}`);
      await page.reload();
      await page.waitForTimeout(500);
    }
    await row.locator('.status', { hasText: 'dead' }).waitFor();
    await shot('dead-letter');
    rmSync(join(demo, 'courier-down'));
    await row.getByRole('button', { name: 'Redrive', exact: true }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Redrive' }).click();
    await page.locator('[data-outcome="applied"]').waitFor();
    await shot('dead-letter-redriven');
    await page.goto(`${query}/console/#/read-models/shipments/shipments/${id}`);
    await page.locator('pre.json', { hasText: 'demo-courier' }).waitFor();
  });

  let sagaPage;
  await step('open a failed saga, retry it once its cause is gone, and see it compensated', async () => {
    // The demo's recipe for a stuck saga: a charge over the limit is declined, and releasing the
    // order's stock is refused while a stock count runs, until the release gives up.
    await api('POST', `${command}/commands/inventory/main`, { type: 'StartStockCount' });
    const id = `saga-${Date.now().toString(36)}`;
    for (const body of [
      { type: 'PlaceOrder', customer: 'barbara' },
      { type: 'AddItem', sku: 'espresso', quantity: 1, unit_price_cents: 60000 },
      { type: 'SubmitOrder' },
    ]) await api('POST', `${command}/commands/order/${id}`, body);
    await section('Sagas');
    await page.getByRole('link', { name: 'stuck', exact: true }).click();
    const row = page.locator('tr[data-saga-status="stuck"]', { hasText: id });
    const deadline = Date.now() + 20000;
    while (!(await row.count())) {
      if (Date.now() > deadline) throw new Error(`the saga of ${id} did not get stuck`);
      // Reloaded, then given time to fetch and render the list before it is looked at again:
      // counting right after a reload raced the page's own request for the list.
      await page.reload();
      await page.waitForTimeout(500);
    }
    await row.getByRole('link').click();
    await page.locator('[data-field="saga-status"]', { hasText: 'stuck' }).waitFor();
    sagaPage = page.url();
    const failed = await page.locator('table.steps').textContent();
    if (!/declined|limit/i.test(failed)) throw new Error(`the steps show no declined charge: ${failed}`);
    await page.locator('[data-compensation="failed"]').waitFor();
    await shot('saga-stuck');
    await api('POST', `${command}/commands/inventory/main`, { type: 'FinishStockCount' });
    await page.getByRole('button', { name: 'Retry', exact: true }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Retry' }).click();
    await page.locator('[data-outcome="retry"]').waitFor();
    // The page follows the instance while the runner compensates.
    await page.locator('[data-field="saga-status"]', { hasText: 'compensated' }).waitFor();
    await page.locator('[data-compensation="compensated"]').waitFor();
    await page.locator('table.history code', { hasText: 'SagaRetried' }).waitFor();
    await shot('saga-retried');
  });

  await step('diff two schema versions with the breaking change marked, and check a schema', async () => {
    const subjects = await api('GET', `${registry}/subjects`);
    const subject = subjects.find((s) => s.includes('OrderPlaced'));
    if (!subject) throw new Error(`no OrderPlaced subject in ${subjects}`);
    const v1 = await api('GET', `${registry}/subjects/${encodeURIComponent(subject)}/versions/1`);
    const schema = JSON.parse(v1.schema);
    const [removed] = Object.keys(schema.properties);
    const next = structuredClone(schema);
    delete next.properties[removed];
    next.required = (next.required || []).filter((p) => p !== removed);
    next.properties.channel = { type: 'string' };
    await api('POST', `${registry}/subjects/${encodeURIComponent(subject)}/versions`, {
      schema: JSON.stringify(next), schemaType: 'JSON', metadata: { properties: { major_version: '2' } },
    });
    await page.goto(`${query}/console/#/schemas`);
    await page.getByRole('link', { name: subject, exact: true }).click();
    await page.locator('[data-compatible="false"]').first().waitFor();
    await page.locator('table.side-by-side tr.breaking').first().waitFor();
    await shot('schema-diff');
    const compatible = structuredClone(schema);
    compatible.properties.note = { type: 'string' };
    await page.getByLabel('A proposed JSON Schema').fill(JSON.stringify(compatible, null, 2));
    await page.getByRole('button', { name: 'Check compatibility' }).click();
    await page.locator('form.check [data-compatible]').waitFor();
  });

  await step('a reader sees no administration actions', async () => {
    await page.goto(`${query}/console/#/projections`);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByLabel('Token or API key').fill(readerToken);
    await page.getByLabel('Token or API key').press('Enter');
    await page.locator('.who', { hasText: 'reader' }).waitFor();
    await page.locator('tr[data-projection="orders"]').waitFor();
    if (await page.getByRole('button', { name: 'Rebuild…' }).count()) throw new Error('a reader is offered a rebuild');
    await section('Dead letters');
    await page.getByRole('note').filter({ hasText: 'dlq:admin' }).waitFor();
    if (await page.getByRole('button', { name: /Redrive/ }).count()) throw new Error('a reader is offered a redrive');
    await page.goto(sagaPage);
    await page.locator('[data-field="saga-status"]', { hasText: 'compensated' }).waitFor();
    if (await page.getByRole('button', { name: /Retry|Abort/ }).count()) throw new Error('a reader is offered a saga action');
  });

  await step("every endpoint the console declares, and every request it made, is an operation of its service's OpenAPI document", async () => {
    const services = { query, command, registry };
    const documents = {};
    for (const [service, base] of Object.entries(services)) documents[service] = (await api('GET', `${base}/openapi.json`)).paths;
    const same = (template) => template.replace(/\{[^}]+\}/g, '{}');
    const undocumented = ENDPOINTS.filter(([service, method, template]) => !Object.entries(documents[service])
      .some(([path, ops]) => ops[method.toLowerCase()] && same(path) === same(template)));
    if (undocumented.length) throw new Error(`declared but undocumented: ${undocumented.map((e) => e.join(' ')).join(', ')}`);
    const byOrigin = Object.fromEntries(Object.entries(services).map(([service, base]) => [new URL(base).origin, service]));
    const undeclared = [...requested].filter((request) => {
      const [method, url] = request.split(' ');
      const { origin, pathname } = new URL(url);
      return !endpointOf(byOrigin[origin], method, pathname);
    });
    if (undeclared.length) throw new Error(`requests the console does not declare: ${undeclared.join(', ')}`);
    const kinds = new Set([...requested].map((r) => r.split(' ')[0]));
    if (requested.size < 20 || !kinds.has('POST')) throw new Error(`only ${[...requested].join(', ')} recorded`);
    console.log(`     ${ENDPOINTS.length} endpoints declared and documented; ${requested.size} distinct requests made, all declared`);
  });

  await step('nothing outside the services was requested and the page logged no error', async () => {
    if (external.length) throw new Error(`requests elsewhere: ${external.join(', ')}`);
    const unexpected = unexpectedErrors(consoleErrors);
    if (unexpected.length) throw new Error(`console errors: ${unexpected.join(' | ')}`);
  });
} catch {
  failed = true;
} finally {
  await browser.close();
}
if (existsSync(join(demo, 'courier-down'))) rmSync(join(demo, 'courier-down'));
process.exit(failed ? 1 : 0);
