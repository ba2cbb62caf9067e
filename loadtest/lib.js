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

function event(prefix, n) {
  return {
    specversion: '1.0',
    id: `${prefix}-${n}`,
    source: SOURCE,
    type: TYPES[n % TYPES.length],
    subject: `user/${(exec.vu.idInTest * 7919 + n) % 10000}`,
    data: { n, path: `/p/${n % 97}`, run: RUN_TAG },
  };
}

// POSTs `size` events (one structured event when size is 1, else a batch) and logs the accepted
// ids as `ACCEPTED <prefix> <size>` for scripts/reconcile.
export function ingest(size) {
  const prefix = `${RUN_TAG}-${exec.vu.idInTest}-${exec.vu.iterationInInstance}`;
  let body;
  let contentType;
  if (size === 1) {
    body = JSON.stringify(event(prefix, 0));
    contentType = 'application/cloudevents+json';
  } else {
    const events = [];
    for (let n = 0; n < size; n++) events.push(event(prefix, n));
    body = JSON.stringify(events);
    contentType = 'application/cloudevents-batch+json';
  }
  const response = http.post(`${BASE_URL}/v1/events`, body, {
    headers: headers(contentType, INGEST_KEY),
    tags: { name: 'ingest' },
  });
  if (response.status === 202) console.log(`ACCEPTED ${prefix} ${size}`);
  return response;
}

// One query of the read API, as a dashboard would send it.
export function query() {
  const type = TYPES[Math.floor(Math.random() * TYPES.length)];
  return http.get(`${BASE_URL}/v1/events?type=${type}&source=${encodeURIComponent(SOURCE)}&limit=50`, {
    headers: headers('application/json', READ_KEY),
    tags: { name: 'query' },
  });
}
