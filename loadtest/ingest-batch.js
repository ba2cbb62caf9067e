// ingest-batch.js — batches of BATCH events (default 100) at a constant arrival rate.
// Env: BASE_URL, WARREN_INGEST_KEY, RUN_TAG, RATE (requests/s, default 400 = 40 000 events/s),
//      BATCH (default 100), DURATION (default 60s), VUS (default 100).
import { check } from 'k6';
import { ingest } from './lib.js';

const BATCH = Number(__ENV.BATCH || 100);

export const options = {
  scenarios: {
    batches: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 400),
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: Number(__ENV.VUS || 100),
      maxVUs: Number(__ENV.VUS || 100) * 2,
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
