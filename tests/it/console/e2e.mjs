// The console in headless Chromium against a running `nexus up --demo` (started by
// tests/it/console.rs, which passes everything through the environment). Each step drives the
// page as an operator would — links, buttons, the keyboard — and waits for what the page shows;
// screenshots go to NEXUS_CONSOLE_SCREENSHOTS. Exits non-zero on the first failed step.
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const require = createRequire(join(env('NEXUS_CONSOLE_NODE_MODULES'), 'noop.js'));
const { chromium } = require('playwright-core');

const query = env('NEXUS_CONSOLE_QUERY_URL');
const command = env('NEXUS_CONSOLE_COMMAND_URL');
const registry = env('NEXUS_CONSOLE_REGISTRY_URL');
const token = env('NEXUS_CONSOLE_TOKEN');
const readerToken = env('NEXUS_CONSOLE_READER_TOKEN');
const demo = env('NEXUS_CONSOLE_DEMO_DIR');
const shots = env('NEXUS_CONSOLE_SCREENSHOTS');
mkdirSync(shots, { recursive: true });

const STEP_MS = 20000;
const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };

async function api(method, url, body) {
  const response = await fetch(url, { method, headers: auth, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${url}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function step(name, run) {
  const started = Date.now();
  try {
    await run();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    console.log(`FAIL ${name}: ${err.stack || err}`);
    throw err;
  }
}

const browser = await chromium.launch({
  executablePath: env('NEXUS_CONSOLE_CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
});
let failed = false;
const external = [];
const consoleErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 800 } });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  // Nothing but the three services: any other request would be a leak (the CSP forbids it too).
  const allowed = [query, command, registry].map((u) => new URL(u).origin);
  page.on('request', (r) => {
    if (!allowed.includes(new URL(r.url()).origin)) external.push(r.url());
  });
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
  const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`) });

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

  await step("see each projection's lag", async () => {
    await page.getByRole('link', { name: 'Projections' }).click();
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

  await step('force a dead letter, redrive it from the console and see it applied', async () => {
    writeFileSync(join(demo, 'courier-down'), 'down\n');
    const id = `dl-${Date.now().toString(36)}`;
    await api('POST', `${command}/commands/order/${id}`, { type: 'PlaceOrder', customer: 'ada' });
    await api('POST', `${command}/commands/order/${id}`, { type: 'AddItem', sku: 'espresso', quantity: 1, unit_price_cents: 250 });
    await api('POST', `${command}/commands/order/${id}`, { type: 'ConfirmOrder' });
    await page.getByRole('link', { name: 'Dead letters' }).click();
    await page.getByRole('link', { name: 'shipments' }).click();
    const row = page.locator('tr', { has: page.getByRole('link', { name: `order/${id}` }) });
    const deadline = Date.now() + 15000;
    while (!(await row.count())) {
      if (Date.now() > deadline) throw new Error(`no dead letter for ${id}`);
      await page.waitForTimeout(500);
      await page.reload();
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
    await page.getByRole('link', { name: 'Dead letters' }).click();
    await page.getByRole('note').filter({ hasText: 'dlq:admin' }).waitFor();
    if (await page.getByRole('button', { name: /Redrive/ }).count()) throw new Error('a reader is offered a redrive');
  });

  await step('nothing outside the services was requested and the page logged no error', async () => {
    if (external.length) throw new Error(`requests elsewhere: ${external.join(', ')}`);
    const unexpected = consoleErrors.filter((e) => !/status of 4\d\d/.test(e));
    if (unexpected.length) throw new Error(`console errors: ${unexpected.join(' | ')}`);
  });
} catch {
  failed = true;
} finally {
  await browser.close();
}
if (existsSync(join(demo, 'courier-down'))) rmSync(join(demo, 'courier-down'));
process.exit(failed ? 1 : 0);
