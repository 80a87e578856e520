import { render } from 'preact';
import { App } from './app.jsx';
import { setConfig } from './api.js';
import './style.css';

async function start() {
  try {
    const response = await fetch('/console/config.json', { cache: 'no-store' });
    if (response.ok) setConfig(await response.json());
  } catch {
    // The defaults: this dashboard only.
  }
  render(<App />, document.getElementById('app'));
}

start();
