// Search highlights as text, kept apart from the view so they can be tested without a browser
// (`test/highlight.test.js`).

const ENTITIES = { '&amp;': '&', '&lt;': '<', '&gt;': '>', '&quot;': '"', '&#39;': "'", '&#x27;': "'", '&#x2F;': '/' };

/// A highlight fragment (HTML-escaped text, matches in `<b>` or `<em>`) as text and marked
/// parts, so nothing from a document is ever parsed as HTML.
export function fragmentParts(fragment) {
  const parts = [];
  let marked = false;
  for (const piece of fragment.split(/(<\/?(?:b|em)>)/)) {
    if (/^<(b|em)>$/.test(piece)) marked = true;
    else if (/^<\/(b|em)>$/.test(piece)) marked = false;
    else if (piece) parts.push({ text: piece.replace(/&(amp|lt|gt|quot|#39|#x27|#x2F);/g, (e) => ENTITIES[e]), marked });
  }
  return parts;
}
