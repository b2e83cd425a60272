// k6 load test of claims: `k6 run -e BASE_URL=http://127.0.0.1:8000 -e PROGRAM=demo claim.js`.
// setup() registers wallets; each iteration prepares a claim and records it, both with an
// Idempotency-Key, with a share of concurrent duplicates (one runs, the others get 409 or its
// replay) and of payload mismatches (the same key with another body: 422). The claim tier
// allows 60 requests per hour per wallet: a 429 is an expected answer.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const PROGRAM = __ENV.PROGRAM || 'demo';
const WALLETS = parseInt(__ENV.WALLETS || '300', 10);
const SIGNATURE = `0x${'ab'.repeat(65)}`;
const serverErrors = new Counter('unexpected_server_errors');

export const options = {
  stages: [
    { duration: '30s', target: 50 },
    { duration: '1m', target: 500 },
    { duration: '30s', target: 0 },
  ],
  setupTimeout: '5m',
  thresholds: {
    unexpected_server_errors: ['count==0'],
    checks: ['rate==1'],
  },
};

http.setResponseCallback(http.expectedStatuses(200, 201, 202, 409, 422, 429, 503));

function hex(n) {
  let out = '';
  for (let i = 0; i < n; i++) out += Math.floor(Math.random() * 16).toString(16);
  return out;
}

function keyed(key) {
  return { headers: { 'Content-Type': 'application/json', 'Idempotency-Key': key } };
}

function judge(res, name, ok) {
  if (res.status >= 500) serverErrors.add(1);
  check(res, { [name]: (r) => ok.includes(r.status) });
}

export function setup() {
  const wallets = [];
  for (let i = 0; i < WALLETS; i++) {
    const wallet = `0x${hex(40)}`;
    const params = keyed(`k6-setup-${i}-${hex(8)}`);
    for (let attempt = 0; attempt < 10; attempt++) {
      // one client address per sign-up, so the register tier does not stop the setup
      params.headers['X-Forwarded-For'] = `172.${16 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
      const res = http.post(`${BASE_URL}/api/register`, JSON.stringify({ wallet }), params);
      if (res.status === 201) {
        wallets.push(wallet);
        break;
      }
      sleep(0.5); // a 503 from the relayer: retry with the same key
    }
  }
  return { wallets };
}

export default function (data) {
  const wallet = data.wallets[Math.floor(Math.random() * data.wallets.length)];
  const prepareUrl = `${BASE_URL}/api/claim/prepare`;
  const body = { wallet, program_id: PROGRAM, amount: '1.5' };
  const params = keyed(`k6-prepare-${__VU}-${__ITER}-${hex(8)}`);
  let prepared;
  if (Math.random() < 0.15) {
    prepared = http.batch([0, 1, 2].map(() => ['POST', prepareUrl, JSON.stringify(body), params]));
  } else {
    prepared = [http.post(prepareUrl, JSON.stringify(body), params)];
  }
  prepared.forEach((r) => judge(r, 'prepare answered', [200, 409, 429]));
  const ok = prepared.find((r) => r.status === 200);
  if (!ok) return;
  check(ok, { 'prepare has transactions': (r) => r.json('transactions') !== undefined });
  if (Math.random() < 0.1) {
    const mismatch = http.post(prepareUrl, JSON.stringify({ ...body, amount: '2' }), params);
    judge(mismatch, 'a reused key with another body is a 422', [422]);
  }

  const recordUrl = `${BASE_URL}/api/claim/record`;
  const record = { wallet, claim_id: ok.json('claim_id'), signature: SIGNATURE };
  const recordParams = keyed(`k6-record-${__VU}-${__ITER}-${hex(8)}`);
  let recorded;
  if (Math.random() < 0.15) {
    recorded = http.batch([0, 1, 2].map(() => ['POST', recordUrl, JSON.stringify(record), recordParams]));
  } else {
    recorded = [http.post(recordUrl, JSON.stringify(record), recordParams)];
  }
  recorded.forEach((r) => judge(r, 'record answered', [202, 409, 429]));
  if (Math.random() < 0.1) {
    const other = { ...record, signature: `0x${'cd'.repeat(65)}` };
    judge(http.post(recordUrl, JSON.stringify(other), recordParams), 'record mismatch is a 422', [422]);
  }
  sleep(Math.random() * 0.2);
}
