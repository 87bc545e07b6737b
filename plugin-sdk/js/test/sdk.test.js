import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Call, Config, ConfigError, Methods, Plugin, RpcError, KvError, codes, err, forward, globMatches, kv, log,
  nowMs, ok, okRaw, respondOk, upstream, upstreamRaw, Context, INTERNAL_ERROR, INVALID_PARAMS, LIMIT_EXCEEDED,
} from '../src/index.js';
import { Harness, MockHost } from '../src/testing.js';

class Defaults extends Plugin {}

test('error codes are the JSON-RPC ones', () => {
  assert.deepEqual(
    [codes.PARSE_ERROR, codes.INVALID_REQUEST, codes.METHOD_NOT_FOUND, codes.INVALID_PARAMS, codes.INTERNAL_ERROR, LIMIT_EXCEEDED],
    [-32700, -32600, -32601, -32602, -32603, -32005],
  );
});

test('the pass-through defaults forward, pass the outcome through and decline both hooks', () => {
  const host = MockHost.install();
  host.setUpstream(() => 1);
  const harness = new Harness(Defaults);
  assert.deepEqual(harness.hooks, { onCall: true, onResult: true });
  assert.deepEqual(host.declined, { onCall: false, onResult: false });
  assert.equal(harness.call('m').result, 1);
  assert.deepEqual(host.declined, { onCall: true, onResult: true });
  assert.deepEqual(host.selected, [], 'no select-methods: every call');
});

test('a plugin overriding one hook declines only the other', () => {
  const host = MockHost.install();
  host.setUpstream(() => 'x');
  class Rewrite extends Plugin {
    onResult(ctx, call, outcome) {
      return ok({ wrapped: outcome.result });
    }
  }
  assert.deepEqual(new Harness(Rewrite).call('m').result, { wrapped: 'x' });
  assert.deepEqual(host.declined, { onCall: true, onResult: false });
});

test('globs match the whole name, as the host does', () => {
  assert.ok(globMatches('eth_*', 'eth_call'));
  assert.ok(globMatches('eth_*', 'eth_'));
  assert.ok(!globMatches('eth_*', 'net_version'));
  assert.ok(globMatches('eth_get?lock*', 'eth_getBlockByNumber'));
  assert.ok(!globMatches('eth_get?lock*', 'eth_getBalance'));
  assert.ok(globMatches('*Number', 'eth_blockNumber'));
  assert.ok(!globMatches('*Number', 'eth_blockNumbers'));
  assert.ok(globMatches('a*b*c', 'axxbyybzc'));
  assert.ok(!globMatches('a*b*c', 'axxbyyb'));
  assert.ok(!globMatches('exact', 'Exact'));
  assert.ok(!globMatches('exact', 'exactly'));
  assert.ok(globMatches('*', ''));
  assert.ok(!globMatches('?', ''));
  assert.ok(globMatches('eth_?', 'eth_é'));
  assert.ok(!globMatches('eth_??', 'eth_é'));
});

test('Methods: matching, notMatching, or', () => {
  const cache = Methods.matching(['eth_chainId', 'eth_getBlockBy*']);
  assert.ok(cache.sees('eth_getBlockByHash') && !cache.sees('eth_blockNumber'));
  const filter = Methods.notMatching(['eth_*']).or(Methods.matching(['debug_*']));
  assert.ok(filter.sees('debug_traceCall') && filter.sees('net_version') && !filter.sees('eth_call'));
  assert.ok(Methods.all().or(cache).sees('anything'));
  assert.ok(!Methods.matching([]).sees('x'));
});

test('selected methods are declared during configure, and unselected calls pass the plugin by', () => {
  const host = MockHost.install();
  host.setUpstream((call) => `${call.method} from node`);
  class Selective extends Plugin {
    methods() {
      return Methods.matching(['a_*']).or(Methods.notMatching(['b_*', 'a_*']));
    }
    onCall(ctx, call) {
      return respondOk('plugin');
    }
  }
  const harness = new Harness(Selective);
  assert.deepEqual(host.selected, [[['a_*'], false], [['b_*', 'a_*'], true]]);
  assert.equal(harness.call('a_x').result, 'plugin');
  assert.equal(harness.call('c').result, 'plugin');
  assert.equal(harness.call('b_x').result, 'b_x from node');
  assert.deepEqual(host.upstreamCalls.map((c) => c.method), ['b_x']);
});

test('config errors read well as a 400', () => {
  MockHost.install();
  class Greeter extends Plugin {
    constructor(config) {
      super();
      this.cfg = config.parse({ greeting: { type: 'string', default: 'Hello' }, n: { type: 'integer', min: 1, default: 3 } });
    }
  }
  assert.deepEqual(new Harness(Greeter, null).plugin.cfg, { greeting: 'Hello', n: 3 });
  assert.deepEqual(new Harness(Greeter, { n: 5 }).plugin.cfg, { greeting: 'Hello', n: 5 });
  assert.throws(() => new Harness(Greeter, { greting: 'x' }), {
    message: 'invalid configuration: unknown field `greting`, expected `greeting` or `n`',
  });
  assert.throws(() => new Harness(Greeter, { greeting: 7 }), {
    message: 'invalid configuration: `greeting` must be a string, got a number',
  });
  assert.throws(() => new Harness(Greeter, { n: 0 }), { message: 'invalid configuration: `n` must be at least 1, got 0' });
  assert.throws(() => new Harness(Greeter, { n: 1.5 }), { message: 'invalid configuration: `n` must be an integer, got a number' });
  assert.throws(() => new Harness(Greeter, [1]), {
    message: 'invalid configuration: expected an object like {"greeting":"Hello","n":3}, got an array',
  });
  assert.throws(() => new Harness(Greeter, '{'), /^Error: invalid configuration: not JSON: /);
});

test('Config.object mirrors the Rust SDK', () => {
  assert.deepEqual(new Config('null').object('{}', ['a']), {});
  const e = (json, fields) => assert.throws(() => new Config(json).object('{"a": 1}', fields), ConfigError);
  e('{"x": 1}', ['a']);
  assert.throws(() => new Config('{"x": 1}').object('{}', ['a', 'b', 'c']), {
    message: 'invalid configuration: unknown field `x`, expected `a`, `b` or `c`',
  });
  assert.throws(() => new Config('{"k": "z"}').parse({ k: { type: 'string', oneOf: ['x', 'y'] } }), {
    message: 'invalid configuration: `k` must be "x" or "y", got "z"',
  });
  assert.throws(() => new Config('{}').parse({ k: { type: 'string' } }), /missing field `k`/);
});

test('any error thrown by configure refuses the configuration with its message', () => {
  MockHost.install();
  class Picky extends Plugin {
    static configure(config) {
      if (config.value === 'string') throw 'plain string refusal';
      throw new Error('something else');
    }
  }
  assert.throws(() => new Harness(Picky, '"string"'), { message: 'plain string refusal' });
  assert.throws(() => new Harness(Picky, 1), { message: 'invalid configuration: something else' });
});

test('an RpcError thrown from a hook answers the call with it', () => {
  const host = MockHost.install();
  host.setUpstream(() => 'node');
  class Limits extends Plugin {
    onCall(ctx, call) {
      if (call.method === 'limited') throw new RpcError(LIMIT_EXCEEDED, 'slow down', { retry_after_ms: 100 });
      return forward(call);
    }
    onResult(ctx, call, outcome) {
      throw new RpcError(-32000, 'rewritten');
    }
  }
  const harness = new Harness(Limits);
  const limited = harness.call('limited');
  assert.equal(limited.error.code, LIMIT_EXCEEDED);
  assert.deepEqual(limited.error.data, { retry_after_ms: 100 });
  assert.deepEqual(limited.toJSON(), { error: { code: -32005, message: 'slow down', data: { retry_after_ms: 100 } } });
  assert.equal(harness.call('other').error.message, 'rewritten');
  assert.equal(host.logs.length, 0, 'an RpcError is an answer, not a failure');
});

test('any other exception becomes -32603 naming the failure, and is logged', () => {
  const host = MockHost.install();
  class Buggy extends Plugin {
    onCall(ctx, call) {
      if (call.method === 'wrong_return') return 42;
      throw new TypeError('undefined is not a function');
    }
  }
  const harness = new Harness(Buggy);
  const outcome = harness.call('m');
  assert.deepEqual(outcome.error.toJSON(), { code: INTERNAL_ERROR, message: 'plugin failed in onCall: undefined is not a function' });
  assert.equal(host.logs[0][0], 'error');
  assert.match(host.logs[0][1], /^plugin failed in onCall: TypeError: undefined is not a function/);
  assert.match(harness.call('wrong_return').error.message, /onCall must return forward\(call\), respond\(outcome\) or a Call/);
  assert.equal(host.upstreamCalls.length, 0);
});

test('calls parse params lazily, rewrite them, and report invalid JSON as invalid params', () => {
  const call = new Call('eth_getBalance', '["0xabc", "latest"]');
  assert.equal(call.paramsText, '["0xabc", "latest"]');
  assert.deepEqual(call.params, ['0xabc', 'latest']);
  call.setParams(['0xabc', '0x10']);
  assert.equal(call.paramsText, '["0xabc","0x10"]');
  assert.equal(new Call('eth_chainId').params, undefined);
  assert.throws(() => new Call('m', '{bad').params, (e) => e instanceof RpcError && e.code === INVALID_PARAMS && /invalid params for m/.test(e.message));
});

test('a rewritten call reaches the upstream as rewritten, and onResult sees it', () => {
  const host = MockHost.install();
  host.setUpstream((call) => call.params);
  class Pin extends Plugin {
    onCall(ctx, call) {
      return call.setParams([call.params[0], 'latest']);
    }
    onResult(ctx, call, outcome) {
      return okRaw(JSON.stringify({ sent: call.params, got: outcome.result }));
    }
  }
  const outcome = new Harness(Pin).call('eth_getBalance', ['0x1', 'pending']);
  assert.deepEqual(outcome.result, { sent: ['0x1', 'latest'], got: ['0x1', 'latest'] });
  assert.equal(host.upstreamCalls[0].paramsText, '["0x1","latest"]');
});

test('upstreamRaw gives the Outcome; without a script it is an error outcome', () => {
  const host = MockHost.install();
  const outcome = upstreamRaw('eth_chainId');
  assert.equal(outcome.error.code, INTERNAL_ERROR);
  assert.throws(() => outcome.unwrap(), RpcError);
  host.setUpstream((call) => (call.method === 'bad' ? err(-32000, 'nope') : '0x1'));
  assert.equal(upstreamRaw({ method: 'eth_chainId', params: [] }).result, '0x1');
  assert.equal(upstreamRaw('bad', [1]).error.message, 'nope');
  assert.deepEqual(host.upstreamCalls.map((c) => [c.method, c.paramsText]), [['eth_chainId', undefined], ['eth_chainId', '[]'], ['bad', '[1]']]);
});

test('upstream gives the result value or throws the RpcError, as Python upstream does', () => {
  const host = MockHost.install();
  host.setUpstream((call) => (call.method === 'bad' ? err(-32000, 'nope', { why: 1 }) : { n: call.params ?? null }));
  assert.deepEqual(upstream('eth_x', [1]), { n: [1] });
  assert.deepEqual(upstream(new Call('eth_y')), { n: null });
  assert.deepEqual(upstream({ method: 'eth_z', params: [2] }), { n: [2] });
  assert.throws(() => upstream('bad'), (e) => e instanceof RpcError && e.code === -32000 && e.message === 'nope' && e.data.why === 1);
  class Relay extends Plugin {
    onCall(ctx, call) {
      return respondOk(upstream(call));
    }
  }
  const harness = new Harness(Relay);
  assert.deepEqual(harness.call('eth_x', [3]).result, { n: [3] });
  assert.deepEqual(harness.call('bad').error.toJSON(), { code: -32000, message: 'nope', data: { why: 1 } }, 'an escaping RpcError answers the call');
  assert.equal(host.logs.length, 0);
});

test('hooks take the context first; the old order fails loudly, naming the new one', () => {
  const host = MockHost.install();
  host.setUpstream(() => 'node');
  const seen = [];
  class Order extends Plugin {
    onCall(ctx, call) {
      seen.push(['onCall', ctx instanceof Context, call instanceof Call]);
      return forward(call);
    }
    onResult(ctx, call, outcome) {
      seen.push(['onResult', ctx instanceof Context, call instanceof Call, outcome.result]);
      return outcome;
    }
  }
  assert.equal(new Harness(Order).call('m').result, 'node');
  assert.deepEqual(seen, [['onCall', true, true], ['onResult', true, true, 'node']]);

  class OldOrder extends Plugin {
    onCall(call, ctx) {
      return forward(call);
    }
  }
  assert.match(new Harness(OldOrder).call('m').error.message, /forward takes a Call, not a Context \(the hooks are onCall\(ctx, call\) and onResult\(ctx, call, outcome\)/);
  class OldOrderResult extends Plugin {
    onResult(call, outcome, ctx) {
      return outcome;
    }
  }
  assert.match(new Harness(OldOrderResult).call('m').error.message, /onResult must return an Outcome .*, not a Call \(the hooks are onCall\(ctx, call\)/);
  class ReturnsCtx extends Plugin {
    onCall(call) {
      return call;
    }
  }
  assert.match(new Harness(ReturnsCtx).call('m').error.message, /onCall must return .*, not a Context \(the hooks are/);
});

test('kv entries expire when the mock clock passes their TTL', () => {
  const host = MockHost.install();
  kv.set('k', 'v', { ttlMs: 100 });
  host.advanceMs(99);
  assert.equal(kv.getText('k'), 'v');
  host.advanceMs(1);
  assert.equal(kv.get('k'), undefined);
  kv.setJson('j', { a: [1] });
  host.advanceMs(1e9);
  assert.deepEqual(kv.getJson('j'), { a: [1] }, 'no TTL: no expiry');
  assert.deepEqual(kv.get('j'), new TextEncoder().encode('{"a":[1]}'));
});

test('kv incr counts from zero, keeps the first TTL, and refuses non-integers', () => {
  const host = MockHost.install();
  assert.equal(kv.incr('n', 5, { ttlMs: 10 }), 5);
  assert.equal(kv.incr('n', -2, { ttlMs: 1000 }), 3);
  assert.equal(kv.getText('n'), '3');
  host.advanceMs(10);
  assert.equal(kv.incr('n'), 1, 'expired with the TTL it was created with');
  kv.set('s', 'x');
  assert.throws(() => kv.incr('s'), (e) => e instanceof KvError && /not an integer/.test(e.message));
  kv.set('max', (2n ** 63n - 1n).toString());
  assert.throws(() => kv.incr('max'), /overflow/);
  kv.set('big', (2n ** 53n - 2n).toString());
  assert.equal(kv.incr('big'), 2 ** 53 - 1, 'a JS number, exact up to 2^53 - 1');
  assert.equal(typeof kv.incr('big', 0), 'number');
  assert.throws(() => kv.incr('big'), RangeError, 'beyond safe integers: a RangeError, not a rounded number');
});

test('kv getInt reads what incr stores; default (0) when absent, expired or not an integer, as Python get_int', () => {
  const host = MockHost.install();
  assert.equal(kv.getInt('n'), 0);
  assert.equal(kv.getInt('n', 7), 7);
  kv.incr('n', 41, { ttlMs: 10 });
  kv.incr('n');
  assert.equal(kv.getInt('n'), 42);
  host.advanceMs(10);
  assert.equal(kv.getInt('n', -1), -1, 'expired');
  for (const [text, want] of [[' 12 ', 12], ['+5', 5], ['-3', -3], ['1_000', 1000], ['007', 7], ['\t3\n', 3], ['-0', 0]]) {
    kv.set('v', text);
    assert.equal(kv.getInt('v', 99), want, JSON.stringify(text));
  }
  for (const text of ['', 'x', '1.0', '1__0', '_1', '1e3', '0x10', '\u00a07']) {
    kv.set('v', text);
    assert.equal(kv.getInt('v', 99), 99, JSON.stringify(text));
  }
  kv.set('v', new Uint8Array([0xff]));
  assert.equal(kv.getInt('v'), 0, 'not UTF-8');
  kv.set('v', (2n ** 60n).toString());
  assert.throws(() => kv.getInt('v'), RangeError);
});

test('compare-and-swap only swaps on the expected value; delete says whether it was there', () => {
  MockHost.install();
  assert.equal(kv.compareAndSwap('c', undefined, '1'), true);
  assert.equal(kv.compareAndSwap('c', undefined, '2'), false);
  assert.equal(kv.compareAndSwap('c', '1', '2'), true);
  assert.equal(kv.getText('c'), '2');
  assert.equal(kv.delete('c'), true);
  assert.equal(kv.delete('c'), false);
});

test('log lines, the clock and the context reach the mock host', () => {
  const host = MockHost.install();
  log.trace('t');
  log.info('i');
  log.write('warn', 'w');
  assert.throws(() => log.write('loud', 'x'), TypeError);
  assert.deepEqual(host.logs, [['trace', 't'], ['info', 'i'], ['warn', 'w']]);
  assert.equal(nowMs(), 1_700_000_000_000);
  host.setNowMs(5);
  assert.equal(nowMs(), 5);
  host.setUpstream(() => null);
  class Who extends Plugin {
    onCall(ctx, call) {
      return respondOk([ctx.instanceId, ctx.bindingId, ctx.plan, ctx.requestId]);
    }
  }
  const harness = new Harness(Who);
  assert.deepEqual(harness.call('m').result, ['test-instance', 'test-binding', 'test-plan', 'test-request']);
  host.setContext({ instanceId: 'i-2', bindingId: null });
  assert.deepEqual(harness.call('m').result, ['i-2', null, 'test-plan', 'test-request']);
});

test('a module without a Plugin class as default export is refused', () => {
  MockHost.install();
  assert.throws(() => new Harness(class NotAPlugin {}), /must be a class that extends Plugin/);
});
