// The JavaScript notification client in headless Chromium against a running `nexus up`:
// the overview page's live feed, then a client of our own that is dropped mid-stream and
// resumes without missing or repeating a change, then a throttled one dropped while its resume
// mark trails documents it already has. Driven by tests/it/notify.rs.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NEXUS_NOTIFY_NODE_MODULES, "noop.js"));
const { chromium } = require("playwright-core");

const query = process.env.NEXUS_NOTIFY_QUERY_URL;
const command = process.env.NEXUS_NOTIFY_COMMAND_URL;
const token = process.env.NEXUS_NOTIFY_TOKEN;

function step(text) {
  console.log("step: " + text);
}

async function send(id, body) {
  const response = await fetch(`${command}/commands/order/${id}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`command on ${id}: ${response.status} ${await response.text()}`);
  return response.json();
}

const browser = await chromium.launch({
  executablePath: process.env.NEXUS_NOTIFY_CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log("page: " + m.text()));
  page.on("pageerror", (e) => console.log("page error: " + e));

  step("the overview page opens its live feed");
  await page.goto(`${query}/`);
  await page.waitForFunction(() => document.getElementById("live-status").textContent === "open", null, { timeout: 15000 });

  step("a placed order shows up in the live feed with its aggregate version");
  const placed = await send("js-1", { type: "PlaceOrder", customer: "ada" });
  await page.waitForFunction(
    (v) => [...document.querySelectorAll("#live tr.change")].some((tr) => tr.textContent.includes("order/js-1@" + v)),
    placed.version,
    { timeout: 10000 },
  );

  step("a client of our own follows one order, is dropped mid-stream and resumes");
  await page.evaluate(() => {
    window.seen = [];
    window.statuses = [];
    window.resets = 0;
    window.client = new NexusNotifications(location.origin, {
      minDelay: 200,
      onStatus: (s, d) => window.statuses.push({ s, d }),
    });
    window.client.subscribe("orders", { projection: "orders", collection: "orders", id: "js-2" }, {
      notification: (n) => window.seen.push(n),
      reset: () => window.resets++,
    });
  });
  await page.waitForFunction(() => window.client.position("orders") !== null, null, { timeout: 10000 });
  await send("js-2", { type: "PlaceOrder", customer: "bob" });
  for (let i = 0; i < 3; i++) await send("js-2", { type: "AddItem", sku: `sku-${i}`, quantity: 1, unit_price_cents: 100 });
  await page.waitForFunction(() => window.seen.some((n) => n.aggregate_version === 4), null, { timeout: 10000 });

  // The link drops; changes happen while the client is away.
  await page.evaluate(() => window.client.socket.close());
  for (let i = 3; i < 6; i++) await send("js-2", { type: "AddItem", sku: `sku-${i}`, quantity: 1, unit_price_cents: 100 });
  const last = await send("js-2", { type: "ConfirmOrder" });
  await page.waitForFunction((v) => window.seen.some((n) => n.aggregate_version === v), last.version, { timeout: 15000 });

  const result = await page.evaluate(() => ({
    versions: window.seen.map((n) => [n.aggregate_version, n.coalesced ? n.coalesced.from_version : n.aggregate_version]),
    positions: window.seen.map((n) => n.position),
    statuses: window.statuses.map((s) => s.s),
    delays: window.statuses.filter((s) => s.s === "reconnecting").map((s) => s.d.delay),
    resets: window.resets,
    fields: window.seen[0],
  }));
  console.log("result: " + JSON.stringify(result));
  // Nothing missed: each notification's range starts right after the previous one's version.
  let version = 0;
  for (const [to, from] of result.versions) {
    if (from !== version + 1) throw new Error(`version ${version + 1} missed or repeated: ${JSON.stringify(result.versions)}`);
    version = to;
  }
  if (version !== last.version) throw new Error(`ended at ${version}, not ${last.version}`);
  for (let i = 1; i < result.positions.length; i++) {
    if (result.positions[i] <= result.positions[i - 1]) throw new Error("positions repeat: " + result.positions);
  }
  if (!result.statuses.includes("reconnecting")) throw new Error("no reconnection: " + result.statuses);
  if (result.resets !== 0) throw new Error("the resume fell back to a reset");
  if (result.delays.some((d) => d < 0 || d > 200)) throw new Error("first retry outside [0, minDelay): " + result.delays);
  for (const field of ["event_id", "aggregate_version", "aggregate_id", "position", "epoch", "committed_at"]) {
    if (result.fields[field] === undefined) throw new Error("no " + field + " in " + JSON.stringify(result.fields));
  }
  step("a throttled client of the whole projection is dropped while its mark trails documents it has, and resumes");
  await page.evaluate(() => {
    window.last = {};
    window.errors = [];
    window.throttled = 0;
    window.resets2 = 0;
    window.client2 = new NexusNotifications(location.origin, { minDelay: 100 });
    window.client2.subscribe("all", { projection: "orders", collection: "orders" }, {
      notification: (n) => {
        if (!n.id.startsWith("jt-")) return;
        const before = window.last[n.id] || 0;
        const from = n.coalesced ? n.coalesced.from_version : n.aggregate_version;
        const count = n.coalesced ? n.coalesced.count : 1;
        if (from !== before + 1 || count !== n.aggregate_version - before) {
          window.errors.push(`${n.id}: ${before} then ${from}..${n.aggregate_version} (${count})`);
        }
        window.last[n.id] = n.aggregate_version;
      },
      throttled: () => window.throttled++,
      reset: () => window.resets2++,
    });
  });
  await page.waitForFunction(() => window.client2.position("all") !== null, null, { timeout: 10000 });
  // Eight orders changing together, faster than the throttle lets through.
  const finals = {};
  const writing = Promise.all(
    [...Array(8).keys()].map(async (o) => {
      const id = `jt-${o}`;
      let answer = await send(id, { type: "PlaceOrder", customer: "eve" });
      for (let i = 0; i < 40; i++) {
        answer = await send(id, { type: "AddItem", sku: `s-${i}`, quantity: 1, unit_price_cents: 10 });
      }
      finals[id] = answer.version;
    }),
  );
  await page.waitForFunction(() => Object.keys(window.client2.subs.all.above).length > 0, null, { timeout: 20000 });
  await page.evaluate(() => window.client2.socket.close());
  await writing;
  await page.waitForFunction(
    (finals) => Object.entries(finals).every(([id, v]) => window.last[id] === v),
    finals,
    { timeout: 20000 },
  );
  const throttledRun = await page.evaluate(() => ({
    errors: window.errors,
    throttled: window.throttled,
    resets: window.resets2,
    remembered: Object.keys(window.client2.subs.all.above).length,
  }));
  console.log("throttled run: " + JSON.stringify(throttledRun));
  if (throttledRun.errors.length) throw new Error("missed or twice: " + throttledRun.errors.join("; "));
  if (throttledRun.throttled === 0) throw new Error("the client was never throttled");
  if (throttledRun.resets !== 0) throw new Error("the resume fell back to a reset");
  step("done");
} finally {
  await browser.close();
}
