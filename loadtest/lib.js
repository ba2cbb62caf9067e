// Shared helpers for Warren's k6 scripts: events with unique ids tagged by run, the API key,
// and the accepted-id log that scripts/reconcile reads.
//
// Env: BASE_URL (default http://127.0.0.1:8080), WARREN_INGEST_KEY, WARREN_READ_KEY,
//      RUN_TAG (default: a timestamp). Every event's source is /loadtest/<RUN_TAG> and its id
//      <RUN_TAG>-<vu>-<iteration>-<n>, so a run can be reconciled against the events table.
import http from 'k6/http';
import exec from 'k6/execution';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
export const RUN_TAG = __ENV.RUN_TAG || `run${Date.now()}`;
export const SOURCE = `/loadtest/${RUN_TAG}`;
const INGEST_KEY = __ENV.WARREN_INGEST_KEY || '';
const READ_KEY = __ENV.WARREN_READ_KEY || '';
const TYPES = ['page.viewed', 'page.left', 'cart.updated', 'order.placed'];

function headers(contentType, key) {
  const result = { 'content-type': contentType };
  if (key) result.authorization = `Bearer ${key}`;
  return result;
}

// JSON-escaped once: the run tag comes from the environment.
const SOURCE_JSON = JSON.stringify(SOURCE);
const RUN_JSON = JSON.stringify(RUN_TAG);
const TYPES_JSON = TYPES.map((type) => JSON.stringify(type));

// One event as JSON text; `escapedPrefix` is the id prefix already escaped for a JSON string.
function eventJson(escapedPrefix, n) {
  const subject = (exec.vu.idInTest * 7919 + n) % 10000;
  return `{"specversion":"1.0","id":"${escapedPrefix}-${n}","source":${SOURCE_JSON},` +
    `"type":${TYPES_JSON[n % TYPES.length]},"subject":"user/${subject}",` +
    `"data":{"n":${n},"path":"/p/${n % 97}","run":${RUN_JSON}}}`;
}

// Bodies differ only in their id prefix, so each VU builds a body of each size once, with a
// placeholder where the prefix goes, and fills it in per request with one native split/join.
// Building 100 events in script for every request made k6 the busiest process on the box.
// The placeholder is a raw NUL, which JSON text never contains.
const PLACEHOLDER = '\u0000';
const templates = {};

function body(size, escapedPrefix) {
  let pieces = templates[size];
  if (pieces === undefined) {
    const events = new Array(size);
    for (let n = 0; n < size; n++) events[n] = eventJson(PLACEHOLDER, n);
    pieces = (size === 1 ? events[0] : `[${events.join(',')}]`).split(PLACEHOLDER);
    templates[size] = pieces;
  }
  return pieces.join(escapedPrefix);
}

// POSTs `size` events (one structured event when size is 1, else a batch) and logs the accepted
// ids as `ACCEPTED <prefix> <size>` for scripts/reconcile, and any other answer as
// `REFUSED <status> <prefix> <size>` so the bench can say what failed.
export function ingest(size) {
  const prefix = `${RUN_TAG}-${exec.vu.idInTest}-${exec.vu.iterationInInstance}`;
  const contentType = size === 1 ? 'application/cloudevents+json' : 'application/cloudevents-batch+json';
  const payload = body(size, JSON.stringify(prefix).slice(1, -1));
  const response = http.post(`${BASE_URL}/v1/events`, payload, {
    headers: headers(contentType, INGEST_KEY),
    tags: { name: 'ingest' },
  });
  if (response.status === 202) console.log(`ACCEPTED ${prefix} ${size}`);
  // Status 0 is k6's own: no answer (timeout or connection error).
  else console.log(`REFUSED ${response.status} ${prefix} ${size}`);
  return response;
}

// Headers of a read-API request: the read key when one is set.
export function readHeaders() {
  return headers('application/json', READ_KEY);
}

// One query of the read API, as a dashboard would send it.
export function query() {
  const type = TYPES[Math.floor(Math.random() * TYPES.length)];
  return http.get(`${BASE_URL}/v1/events?type=${type}&source=${encodeURIComponent(SOURCE)}&limit=50`, {
    headers: readHeaders(),
    tags: { name: 'query' },
  });
}
