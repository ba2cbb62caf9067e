// soak.js — a long steady rate of small batches, to catch leaks and slow drifts.
// Env: BASE_URL, WARREN_INGEST_KEY, RUN_TAG, RATE (requests/s, default 200), BATCH (default 10),
//      DURATION (default 30m), VUS (default 50).
import { check } from 'k6';
import { ingest } from './lib.js';

const BATCH = Number(__ENV.BATCH || 10);

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 200),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30m',
      preAllocatedVUs: Number(__ENV.VUS || 50),
      maxVUs: Number(__ENV.VUS || 50) * 2,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{name:ingest}': ['p(99)<50'],
  },
};

export default function () {
  check(ingest(BATCH), { '202': (r) => r.status === 202 });
}
