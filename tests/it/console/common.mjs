// What both browser runs (e2e.mjs in Chromium, firefox.mjs in Firefox) share: the environment
// tests/it/console.rs passes, the services' HTTP API with the admin token, and named steps.
import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

/// `require` for the packages installed under NEXUS_CONSOLE_NODE_MODULES (outside the clone).
export const requireModule = createRequire(join(env('NEXUS_CONSOLE_NODE_MODULES'), 'noop.js'));

export const query = env('NEXUS_CONSOLE_QUERY_URL');
export const command = env('NEXUS_CONSOLE_COMMAND_URL');
export const registry = env('NEXUS_CONSOLE_REGISTRY_URL');
export const token = env('NEXUS_CONSOLE_TOKEN');
export const shots = env('NEXUS_CONSOLE_SCREENSHOTS');
mkdirSync(shots, { recursive: true });

/// How long one wait of a step may take.
export const STEP_MS = 20000;
const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };

export async function api(method, url, body) {
  const response = await fetch(url, { method, headers: auth, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${url}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

export async function step(name, run) {
  const started = Date.now();
  try {
    await run();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    console.log(`FAIL ${name}: ${err.stack || err}`);
    throw err;
  }
}

/// Whether `url` is one of the three services' origins; the page may request nothing else.
export const allowedOrigin = (url) => [query, command, registry].map((u) => new URL(u).origin).includes(new URL(url).origin);

/// Console errors other than the 4xx answers some steps provoke on purpose.
export const unexpectedErrors = (errors) => errors.filter((e) => !/status of 4\d\d/.test(e));
