// queries.js — the read path under load: GET /v1/events with a filter at a constant rate, while
// batches are ingested at half the batch target. Run it against a stack whose table holds the
// synthetic events of scripts/perf/prefill (scripts/perf/bench --scenarios queries --prefill 10000000 does
// both): the filters pick types, sources and subjects that exist there.
// Env: BASE_URL, WARREN_INGEST_KEY, WARREN_READ_KEY, RUN_TAG, QUERY_RATE (requests/s, default
//      500), INGEST_RATE (batch requests/s, default 200 = 20 000 events/s), BATCH (default 100),
//      DURATION (default 60s), VUS (default 200), KINDS (the filter shapes to send, comma-separated,
//      default all six: type, type_prefix, source, subject, window, type_window).
import { check } from 'k6';
import http from 'k6/http';
import { BASE_URL, ingest, readHeaders } from './lib.js';

const VUS = Number(__ENV.VUS || 200);
const DURATION = __ENV.DURATION || '60s';
const BATCH = Number(__ENV.BATCH || 100);

export const options = {
  // Only the status is checked: k6 receives each page of 50 events and keeps none of it. Kept
  // pages doubled the measured p99 (docs/benchmarks.md, thirty-third round).
  discardResponseBodies: true,
  scenarios: {
    queries: {
      executor: 'constant-arrival-rate',
      exec: 'readEvents',
      rate: Number(__ENV.QUERY_RATE || 500),
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: VUS * 2,
    },
    ingest: {
      executor: 'constant-arrival-rate',
      exec: 'ingestBatches',
      rate: Number(__ENV.INGEST_RATE || 200),
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: VUS * 2,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{name:query}': ['p(99)<20'],
    'http_req_duration{name:ingest}': ['p(99)<50'],
    // Exported so the summary counts the queries on their own.
    'http_reqs{name:query}': ['count>0'],
    // Each filter shape on its own, so a slow one shows instead of hiding in the mix.
    ...Object.fromEntries(['type', 'type_prefix', 'source', 'subject', 'window', 'type_window']
      .map((kind) => [`http_req_duration{kind:${kind}}`, ['p(99)<20']])),
  },
};

// The shapes of scripts/perf/prefill: 10 families of types with .v1-.v4 variants, 1 000 sources,
// 100 000 subjects, 30 days.
const FAMILIES = ['page.viewed', 'page.left', 'page.scrolled', 'order.placed', 'order.paid',
  'cart.viewed', 'cart.updated', 'user.signed_up', 'user.logged_in', 'search.done'];
const pick = (items) => items[Math.floor(Math.random() * items.length)];
const variant = () => pick(FAMILIES) + pick(['', '.v1', '.v2', '.v3', '.v4']);
const DAY_MS = 86400000;

const SHAPES = ['type', 'type_prefix', 'source', 'subject', 'window', 'type_window'];
const KINDS = (__ENV.KINDS || SHAPES.join(',')).split(',').map((kind) => {
  if (!SHAPES.includes(kind)) throw new Error(`KINDS: unknown shape ${kind}`);
  return SHAPES.indexOf(kind);
});

// One filter of each shape the read API serves, with the shape's name for the per-kind figures.
function filter() {
  const timeWindow = () => {
    const until = Date.now() - Math.floor(Math.random() * 29) * DAY_MS;
    return `since=${new Date(until - DAY_MS).toISOString()}&until=${new Date(until).toISOString()}`;
  };
  switch (pick(KINDS)) {
    case 0: return ['type', `type=${variant()}`];
    case 1: return ['type_prefix', `type=${pick(['page', 'order', 'cart', 'user', 'search'])}.*`];
    case 2: return ['source', `source=${encodeURIComponent(`https://app${Math.floor(Math.random() * 1000)}.example/web`)}`];
    case 3: return ['subject', `subject=${encodeURIComponent(`user/${Math.floor(Math.random() * 100000)}`)}`];
    case 4: return ['window', timeWindow()];
    default: return ['type_window', `type=${variant()}&${timeWindow()}`];
  }
}

export function readEvents() {
  const [kind, query] = filter();
  const response = http.get(`${BASE_URL}/v1/events?${query}&limit=50`, {
    headers: readHeaders(),
    tags: { name: 'query', kind },
  });
  check(response, { '200': (r) => r.status === 200 });
}

export function ingestBatches() {
  check(ingest(BATCH), { '202': (r) => r.status === 202 });
}
