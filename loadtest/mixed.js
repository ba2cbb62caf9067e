// mixed.js — 90% ingest (single events) and 10% queries, at a constant arrival rate.
// Env: BASE_URL, WARREN_INGEST_KEY, WARREN_READ_KEY, RUN_TAG, RATE (requests/s, default 1000),
//      DURATION (default 60s), VUS (default 200).
import { check } from 'k6';
import { ingest, query } from './lib.js';

export const options = {
  // Only statuses are checked: k6 receives each answer and keeps none of it (queries.js does the
  // same; kept pages doubled the p99 k6 reported there).
  discardResponseBodies: true,
  scenarios: {
    mixed: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 1000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: Number(__ENV.VUS || 200),
      maxVUs: Number(__ENV.VUS || 200) * 2,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{name:ingest}': ['p(99)<20'],
    'http_req_duration{name:query}': ['p(99)<20'],
    // Exported so the summary counts the queries on their own.
    'http_reqs{name:query}': ['count>0'],
  },
};

export default function () {
  if (Math.random() < 0.1) {
    check(query(), { '200': (r) => r.status === 200 });
  } else {
    check(ingest(1), { '202': (r) => r.status === 202 });
  }
}
