// Native tests of {{name}}: `npm test` (node --test), through the SDK's mock host.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Harness, MockHost } from '@ovsb/plugin-sdk/testing';
import HelloWorld from './plugin.js';

test('hello_world answers with the greeting and the instance id, without the node', () => {
  const host = MockHost.install();
  const harness = new Harness(HelloWorld, { greeting: 'Howdy' });
  assert.equal(harness.call('hello_world').result, 'Howdy from test-instance');
  host.setContext({ instanceId: 'instance-2' });
  assert.equal(harness.call('hello_world', []).result, 'Howdy from instance-2');
  assert.equal(host.upstreamCalls.length, 0);
});

test('the greeting is optional', () => {
  MockHost.install();
  assert.equal(new Harness(HelloWorld, null).call('hello_world').result, 'hello from test-instance');
  assert.equal(new Harness(HelloWorld, {}).call('hello_world').result, 'hello from test-instance');
});

test('only hello_world is selected; every other call reaches the node unchanged', () => {
  const host = MockHost.install();
  host.setUpstream((call) => `${call.method} from the node`);
  const harness = new Harness(HelloWorld);
  assert.deepEqual(host.selected, [[['hello_world'], false]]);
  assert.equal(harness.call('eth_chainId').result, 'eth_chainId from the node');
  assert.deepEqual(host.upstreamCalls.map((c) => [c.method, c.paramsText]), [['eth_chainId', undefined]]);
});

test('a wrong configuration is refused with a message the operator can act on', () => {
  MockHost.install();
  assert.throws(() => new Harness(HelloWorld, { greting: 'hi' }), {
    message: 'invalid configuration: unknown field `greting`, expected `greeting`',
  });
  assert.throws(() => new Harness(HelloWorld, { greeting: 3 }), {
    message: 'invalid configuration: `greeting` must be a string, got a number',
  });
});
