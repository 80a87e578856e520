// Search highlights become text and marked parts, never HTML.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fragmentParts } from '../src/highlight.js';

test('matches are marked and the escaped text is read back as text', () => {
  assert.deepEqual(fragmentParts('order for <b>ada</b> &amp; &lt;grace&gt; &quot;x&quot; &#x27;y&#x27;'), [
    { text: 'order for ', marked: false },
    { text: 'ada', marked: true },
    { text: ' & <grace> "x" \'y\'', marked: false },
  ]);
  assert.deepEqual(fragmentParts('<em>Red</em> running'), [
    { text: 'Red', marked: true },
    { text: ' running', marked: false },
  ]);
});

test('markup in a document stays text', () => {
  const parts = fragmentParts('&lt;img src=x onerror=alert(1)&gt; <b>ada</b>');
  assert.equal(parts[0].text, '<img src=x onerror=alert(1)> ');
  assert.equal(parts[0].marked, false);
  assert.deepEqual(parts[1], { text: 'ada', marked: true });
});
