// ingest.js — single structured events at a constant arrival rate (open model: the rate holds
// even when responses slow down, as with real clients).
// Env: BASE_URL, WARREN_INGEST_KEY, RUN_TAG, RATE (requests/s, default 1000), DURATION (default 60s),
//      VUS (pre-allocated, default 200).
import { check } from 'k6';
import { ingest } from './lib.js';

export const options = {
  scenarios: {
    ingest: {
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
  },
};

export default function () {
  check(ingest(1), { '202': (r) => r.status === 202 });
}
