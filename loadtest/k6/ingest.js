// HTTP ingest at a constant arrival rate: POST /v1/ingest batches of telemetry to a router.
//
//   k6 run --no-usage-report -e TARGET=http://127.0.0.1:8081 -e RATE=200 -e DURATION=30s loadtest/k6/ingest.js
//
// Environment (-e NAME=value or the process environment):
//   TARGET        the router's base URL (default http://127.0.0.1:8081)
//   TOKEN         bearer token of the ingest API (router.ingest_token), if one is set
//   RATE          requests per second, held constant whatever the latency (default 50)
//   BATCH         messages per request (default 10): messages/s = RATE × BATCH
//   DURATION      how long (default 30s)
//   THINGS        Things addressed, THING_PREFIX + 6-digit index (default 1000, "sim-thing-")
//   P99_MS        threshold on the 99th percentile request duration (default 500)
//   VUS, MAX_VUS  virtual users allocated up front / at most (default 20 / 200)
//
// Thresholds: no failed request, every check passed (202 and every message of the batch
// accepted), p99 under P99_MS. The counter ingest_messages_accepted says how many messages the
// fleet took (loadtest/smoke compares it with the writes the platform simulator recorded).
// Every message carries a distinct "rpm" value and the device timestamp, for one write each.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const TARGET = (__ENV.TARGET || 'http://127.0.0.1:8081').replace(/\/+$/, '');
const TOKEN = __ENV.TOKEN || '';
const RATE = parseInt(__ENV.RATE || '50', 10);
const BATCH = parseInt(__ENV.BATCH || '10', 10);
const DURATION = __ENV.DURATION || '30s';
const THINGS = parseInt(__ENV.THINGS || '1000', 10);
const THING_PREFIX = __ENV.THING_PREFIX || 'sim-thing-';
const P99_MS = parseInt(__ENV.P99_MS || '500', 10);
const VUS = parseInt(__ENV.VUS || '20', 10);
const MAX_VUS = parseInt(__ENV.MAX_VUS || '200', 10);

const accepted = new Counter('ingest_messages_accepted');
const notAccepted = new Counter('ingest_messages_not_accepted');

export const options = {
  scenarios: {
    ingest: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: MAX_VUS,
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    http_req_duration: [`p(99)<${P99_MS}`],
    ingest_messages_not_accepted: ['count==0'],
  },
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

function thing(i) {
  return THING_PREFIX + String(i % THINGS).padStart(6, '0');
}

export default function () {
  // iterationInTest is unique over all VUs: distinct values, Things round-robin.
  const first = exec.scenario.iterationInTest * BATCH;
  const ts = Date.now();
  const messages = [];
  for (let i = 0; i < BATCH; i++) {
    const n = first + i;
    messages.push({ topic: `things/${thing(n)}/telemetry`, payload: { rpm: n + 1, timestamp: ts } });
  }
  const headers = { 'Content-Type': 'application/json' };
  if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
  const res = http.post(`${TARGET}/v1/ingest`, JSON.stringify({ messages }), {
    headers,
    tags: { name: 'POST /v1/ingest' },
  });
  let taken = 0;
  if (res.status === 202) {
    try {
      taken = res.json('accepted') || 0;
    } catch (e) {
      taken = 0;
    }
  }
  check(res, {
    'status is 202': (r) => r.status === 202,
    'every message accepted': () => taken === BATCH,
  });
  accepted.add(taken);
  notAccepted.add(BATCH - taken);
}
