// Native tests of js_plugin: `npm test` (node --test), through the SDK's mock host.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { err } from '@ovsb/plugin-sdk';
import { Harness, MockHost } from '@ovsb/plugin-sdk/testing';
import JsPlugin from './plugin.js';

const BLOCK = { number: '0x1b4', hash: '0xabc', timestamp: '0x6553f100', parentHash: '0x0', transactions: [] };
const TIMESTAMP_MS = 0x6553f100 * 1000;

function node(host, block = BLOCK) {
  host.setUpstream((call) => {
    if (call.method === 'eth_getBlockByNumber') return block;
    if (call.method === 'web3_clientVersion') return 'Geth/v1.14.0';
    return `${call.method} from the node`;
  });
}

test('head_info answers the latest block in decimal with its age', () => {
  const host = MockHost.install();
  node(host);
  host.setNowMs(TIMESTAMP_MS + 1500);
  const outcome = new Harness(JsPlugin).call('head_info');
  assert.deepEqual(outcome.result, { number: 436, hash: '0xabc', timestamp: 0x6553f100, age_ms: 1500 });
  assert.deepEqual(host.upstreamCalls.map((c) => [c.method, c.paramsText]), [['eth_getBlockByNumber', '["latest",false]']]);
  assert.deepEqual(host.logs, [['info', 'head_info: asking the node for the latest block']]);
});

test('head_info caches the block for cache_ms: no upstream call within it, age_ms still fresh', () => {
  const host = MockHost.install();
  node(host);
  host.setNowMs(TIMESTAMP_MS);
  const harness = new Harness(JsPlugin, { cache_ms: 500 });
  assert.equal(harness.call('head_info').result.age_ms, 0);
  host.advanceMs(499);
  assert.equal(harness.call('head_info').result.age_ms, 499);
  assert.equal(host.upstreamCalls.length, 1, 'served from the cache');
  host.advanceMs(1);
  assert.equal(harness.call('head_info').result.age_ms, 500);
  assert.equal(host.upstreamCalls.length, 2, 'the cache entry expired');
  assert.equal(host.logLines('info').length, 2, 'logged only when reaching the node');
});

test('the cache is shared by every copy of the plugin (it is in the kv store)', () => {
  const host = MockHost.install();
  node(host);
  new Harness(JsPlugin).call('head_info');
  new Harness(JsPlugin).call('head_info');
  assert.equal(host.upstreamCalls.length, 1);
});

test('cache_ms 0 asks the node every time', () => {
  const host = MockHost.install();
  node(host);
  const harness = new Harness(JsPlugin, { cache_ms: 0 });
  harness.call('head_info');
  harness.call('head_info');
  assert.equal(host.upstreamCalls.length, 2);
});

test("head_info passes the node's error on, and refuses a block it cannot read", () => {
  const host = MockHost.install();
  host.setUpstream(() => err(-32000, 'header not found'));
  const harness = new Harness(JsPlugin);
  assert.deepEqual(harness.call('head_info').error.toJSON(), { code: -32000, message: 'header not found' });
  node(host, null);
  assert.equal(harness.call('head_info').error.message, 'the node returned no latest block');
  node(host, { ...BLOCK, number: 'four' });
  assert.deepEqual(harness.call('head_info').error.toJSON(), {
    code: -32000,
    message: "the node's latest block has no valid `number`",
    data: { number: 'four' },
  });
});

test('web3_clientVersion gets the suffix; errors pass through', () => {
  const host = MockHost.install();
  node(host);
  assert.equal(new Harness(JsPlugin).call('web3_clientVersion').result, 'Geth/v1.14.0 (via ovsb)');
  assert.equal(new Harness(JsPlugin, { suffix: ' [edge]' }).call('web3_clientVersion').result, 'Geth/v1.14.0 [edge]');
  host.setUpstream(() => err(-32601, 'method not found'));
  assert.equal(new Harness(JsPlugin).call('web3_clientVersion').error.code, -32601);
});

test('only head_info and web3_clientVersion are selected; others reach the node untouched', () => {
  const host = MockHost.install();
  node(host);
  const harness = new Harness(JsPlugin);
  assert.deepEqual(host.selected, [[['head_info', 'web3_clientVersion'], false]]);
  assert.equal(harness.call('eth_chainId').result, 'eth_chainId from the node');
  assert.deepEqual(host.declined, { onCall: false, onResult: false });
});

test('configuration errors read well as a 400', () => {
  MockHost.install();
  assert.throws(() => new Harness(JsPlugin, { cache: 5 }), {
    message: 'invalid configuration: unknown field `cache`, expected `cache_ms` or `suffix`',
  });
  assert.throws(() => new Harness(JsPlugin, { cache_ms: '5' }), {
    message: 'invalid configuration: `cache_ms` must be an integer, got a string',
  });
  assert.throws(() => new Harness(JsPlugin, { cache_ms: -1 }), {
    message: 'invalid configuration: `cache_ms` must be at least 0, got -1',
  });
  assert.throws(() => new Harness(JsPlugin, 'true'), {
    message: 'invalid configuration: expected an object like {"cache_ms": 1000, "suffix": " (via ovsb)"}, got a boolean',
  });
});
