// Text from clients, cut to a size before it is echoed back or stored: a
// request that quotes a 4 MB string must not become a 4 MB status trailer
// or audit record.

// Half of a surrogate pair, alone.
const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * `text` in at most `maxBytes` of UTF-8, cut with `… (N more characters)`,
 * and with no lone surrogate (a cut may split a pair, and encodeURI throws
 * on half of one): U+FFFD stands in for it.
 */
export function capText(text: string, maxBytes: number): string {
  let capped = text;
  if (Buffer.byteLength(capped) > maxBytes) {
    let cut = capped.slice(0, maxBytes);
    while (Buffer.byteLength(cut) > maxBytes - 40) cut = cut.slice(0, Math.floor(cut.length * 0.9));
    capped = `${cut}… (${text.length - cut.length} more characters)`;
  }
  return capped.replace(loneSurrogate, "\uFFFD");
}
