// The scheduler's admin API under read load: GET /v1/fleet, /v1/shards, /v1/shards/{id},
// /v1/workers and /v1/things/{name} in turn, at a constant arrival rate.
//
//   k6 run --no-usage-report -e TARGET=http://127.0.0.1:8080 -e TOKEN=... loadtest/k6/admin.js
//
// Environment:
//   TARGET        the scheduler's admin base URL (default http://127.0.0.1:8080)
//   TOKEN         bearer token of the admin API (scheduler.admin_token), if one is set
//   RATE          requests per second (default 50)
//   DURATION      how long (default 30s)
//   THINGS        Things the fleet has, THING_PREFIX + 6-digit index (default 1000, "sim-thing-")
//   P99_MS        threshold on the 99th percentile request duration (default 500)
//   VUS, MAX_VUS  virtual users allocated up front / at most (default 10 / 100)
//
// Thresholds: no failed request, every check passed (200 and an answer of the documented shape —
// see services/scheduler/openapi.json — that agrees with the fleet: every Thing assigned and
// owned), p99 under P99_MS, overall and per endpoint.
import http from 'k6/http';
import { check, fail } from 'k6';
import exec from 'k6/execution';

const TARGET = (__ENV.TARGET || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const TOKEN = __ENV.TOKEN || '';
const RATE = parseInt(__ENV.RATE || '50', 10);
const DURATION = __ENV.DURATION || '30s';
const THINGS = parseInt(__ENV.THINGS || '1000', 10);
const THING_PREFIX = __ENV.THING_PREFIX || 'sim-thing-';
const P99_MS = parseInt(__ENV.P99_MS || '500', 10);
const VUS = parseInt(__ENV.VUS || '10', 10);
const MAX_VUS = parseInt(__ENV.MAX_VUS || '100', 10);

const ENDPOINTS = ['fleet', 'shards', 'shard', 'workers', 'thing'];

const thresholds = {
  http_req_failed: ['rate==0'],
  checks: ['rate==1'],
  http_req_duration: [`p(99)<${P99_MS}`],
};
for (const e of ENDPOINTS) thresholds[`http_req_duration{endpoint:${e}}`] = [`p(99)<${P99_MS}`];

export const options = {
  scenarios: {
    reads: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: MAX_VUS,
    },
  },
  thresholds,
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

function params(endpoint, name) {
  const headers = {};
  if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
  return { headers, tags: { endpoint, name } };
}

function json(res) {
  try {
    return res.json();
  } catch (e) {
    return undefined;
  }
}

export function setup() {
  const res = http.get(`${TARGET}/v1/shards`, params('setup', 'GET /v1/shards (setup)'));
  const shards = res.status === 200 ? json(res) : undefined;
  if (!Array.isArray(shards) || shards.length === 0) {
    fail(`GET /v1/shards: ${res.status} ${res.body}`);
  }
  return { shards: shards.map((s) => s.shard.id) };
}

export default function (data) {
  const i = exec.scenario.iterationInTest;
  const endpoint = ENDPOINTS[i % ENDPOINTS.length];
  let res;
  let body;
  switch (endpoint) {
    case 'fleet':
      res = http.get(`${TARGET}/v1/fleet`, params(endpoint, 'GET /v1/fleet'));
      body = json(res);
      check(res, {
        'fleet: 200': (r) => r.status === 200,
        'fleet: every Thing assigned, every shard owned': () =>
          body !== undefined && body.things === THINGS && body.shards === data.shards.length &&
          body.shards_owned === body.shards,
      });
      break;
    case 'shards':
      res = http.get(`${TARGET}/v1/shards`, params(endpoint, 'GET /v1/shards'));
      body = json(res);
      check(res, {
        'shards: 200': (r) => r.status === 200,
        'shards: each owned, with its stream': () =>
          Array.isArray(body) && body.length === data.shards.length &&
          body.every((s) => s.shard && s.shard.owner && s.stream),
      });
      break;
    case 'shard': {
      const id = data.shards[Math.floor(i / ENDPOINTS.length) % data.shards.length];
      res = http.get(`${TARGET}/v1/shards/${id}`, params(endpoint, 'GET /v1/shards/{id}'));
      body = json(res);
      check(res, {
        'shard: 200': (r) => r.status === 200,
        'shard: its id and Things': () =>
          body !== undefined && body.shard.id === id && Array.isArray(body.things) &&
          body.things.length === body.shard.members,
      });
      break;
    }
    case 'workers':
      res = http.get(`${TARGET}/v1/workers`, params(endpoint, 'GET /v1/workers'));
      body = json(res);
      check(res, {
        'workers: 200': (r) => r.status === 200,
        'workers: at least one': () => Array.isArray(body) && body.length > 0,
      });
      break;
    default: {
      const name = THING_PREFIX + String(Math.floor(i / ENDPOINTS.length) % THINGS).padStart(6, '0');
      res = http.get(`${TARGET}/v1/things/${name}`, params(endpoint, 'GET /v1/things/{name}'));
      body = json(res);
      check(res, {
        'thing: 200': (r) => r.status === 200,
        'thing: its name, shard and owner': () =>
          body !== undefined && body.thing.name === name && typeof body.thing.shard === 'number' &&
          typeof body.owner === 'string',
      });
    }
  }
}
