// spike.js — a ramping arrival rate of single events, to find the knee where latency bends.
// Env: BASE_URL, WARREN_INGEST_KEY, RUN_TAG, START (requests/s, default 500), PEAK (default 20000),
//      STAGE (duration of each step, default 10s), STEPS (default 5), VUS (default 400).
import { check } from 'k6';
import { ingest } from './lib.js';

const START = Number(__ENV.START || 500);
const PEAK = Number(__ENV.PEAK || 20000);
const STEPS = Number(__ENV.STEPS || 5);
const STAGE = __ENV.STAGE || '10s';
const stages = [];
for (let step = 1; step <= STEPS; step++) {
  stages.push({ target: Math.round(START + ((PEAK - START) * step) / STEPS), duration: STAGE });
}

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: START,
      timeUnit: '1s',
      stages,
      preAllocatedVUs: Number(__ENV.VUS || 400),
      maxVUs: Number(__ENV.VUS || 400) * 2,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
  },
};

export default function () {
  check(ingest(1), { '202': (r) => r.status === 202 });
}
