// k6 load test of sign-ups: `k6 run -e BASE_URL=http://127.0.0.1:8000 register.js`.
// Every request carries an Idempotency-Key; a share is retried with the same key, some of
// them concurrently. Each iteration speaks for a client address through X-Forwarded-For,
// which the service believes from a trusted proxy (uvicorn trusts loopback by default), so
// the register tier (5 per hour per address) limits some addresses: a 429 is an expected
// answer, as is a 503 from the relayer (retried with the same key).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const ADDRESSES = parseInt(__ENV.ADDRESSES || '5000', 10);
const serverErrors = new Counter('unexpected_server_errors');

export const options = {
  stages: [
    { duration: '30s', target: 100 }, // ramp up
    { duration: '1m', target: 1000 }, // burst
    { duration: '30s', target: 0 }, // ramp down
  ],
  thresholds: {
    unexpected_server_errors: ['count==0'],
    checks: ['rate==1'],
  },
};

http.setResponseCallback(http.expectedStatuses(201, 409, 429, 503));

function hex(n) {
  let out = '';
  for (let i = 0; i < n; i++) out += Math.floor(Math.random() * 16).toString(16);
  return out;
}

function address() {
  const n = Math.floor(Math.random() * ADDRESSES);
  return `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
}

function judge(res) {
  if (res.status >= 500 && res.status !== 503) serverErrors.add(1);
  check(res, {
    'answered as designed': (r) => [201, 409, 429, 503].includes(r.status),
    'a 201 carries the tx_hash': (r) => r.status !== 201 || r.json('tx_hash') !== undefined,
  });
}

export default function () {
  const wallet = `0x${hex(40)}`;
  const params = {
    headers: {
      'Content-Type': 'application/json',
      'Idempotency-Key': `k6-register-${__VU}-${__ITER}-${hex(8)}`,
      'X-Forwarded-For': address(),
    },
  };
  const payload = JSON.stringify({ wallet });
  const url = `${BASE_URL}/api/register`;
  const roll = Math.random();
  let answers;
  if (roll < 0.15) {
    // concurrent duplicates: one runs, the others get 409 (in flight) or its replay
    answers = http.batch([0, 1, 2].map(() => ['POST', url, payload, params]));
  } else {
    answers = [http.post(url, payload, params)];
  }
  answers.forEach(judge);
  for (let i = 0; i < 5 && answers.every((r) => r.status !== 201) && answers.some((r) => r.status === 503); i++) {
    sleep(0.2);
    answers = [http.post(url, payload, params)]; // the relayer failed: same key again
    answers.forEach(judge);
  }
  if (roll >= 0.15 && roll < 0.35 && answers.some((r) => r.status === 201)) {
    const replay = http.post(url, payload, params);
    judge(replay);
    check(replay, { 'a retry replays': (r) => r.headers['Idempotent-Replayed'] === 'true' });
  }
  sleep(Math.random() * 0.2);
}
