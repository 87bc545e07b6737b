// Builds test/fixtures/probe-plugin.js into a component with build.mjs, runs it in Node through
// jco's transpiler (a dependency of ComponentizeJS) with the mock host behind the
// `ovsb:plugin/host` imports, and checks what the glue does in the real component. Slow (a build):
// runs only with OVSB_COMPONENT_TESTS=1, after ./setup.sh.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { Outcome, err } from '../src/index.js';
import { MockHost } from '../src/testing.js';

const SDK = fileURLToPath(new URL('..', import.meta.url));
const enabled = process.env.OVSB_COMPONENT_TESTS === '1';

// jco's host side: inline result<T, E> imports return { tag, val } instead of throwing.
const HOST_MODULE = `
const h = () => globalThis.__ovsbMockHost;
const wrap = (f) => { try { return { tag: 'ok', val: f() }; } catch (e) { if (e && 'payload' in e) return { tag: 'err', val: e.payload }; throw e; } };
export const callContext = () => h().callContext();
export const log = (l, m) => h().log(l, m);
export const upstream = (c) => h().upstream(c);
export const nowMs = () => h().nowMs();
export const declineHook = (x) => h().declineHook(x);
export const selectMethods = (p, e) => h().selectMethods(p, e);
export const kvGet = (k) => h().kvGet(k);
export const kvSet = (k, v, t) => wrap(() => h().kvSet(k, v, t));
export const kvIncr = (k, d, t) => wrap(() => h().kvIncr(k, d, t));
export const kvCompareAndSwap = (k, e, n, t) => wrap(() => h().kvCompareAndSwap(k, e, n, t));
export const kvDelete = (k) => h().kvDelete(k);
`;

test('the built component speaks the contract through the SDK glue', { skip: !enabled && 'set OVSB_COMPONENT_TESTS=1', timeout: 300_000 }, async () => {
  const work = mkdtempSync(join(tmpdir(), 'ovsb-js-component-'));
  const wasm = join(work, 'probe.wasm');
  execFileSync(process.execPath, [join(SDK, 'build.mjs'), join(SDK, 'test/fixtures/probe-plugin.js'), wasm], { stdio: 'inherit' });
  writeFileSync(join(work, 'host.js'), HOST_MODULE);
  const jco = join(SDK, 'node_modules/@bytecodealliance/jco/dist/jco.js');
  execFileSync(process.execPath, [jco, 'transpile', wasm, '-o', join(work, 'out'), '--map', 'ovsb:plugin/host@0.1.0=../host.js', '--no-typescript'], { stdio: 'ignore' });
  const host = new MockHost();
  globalThis.__ovsbMockHost = host;
  host.setUpstream((call) => (call.method === 'fail' ? err(-32000, 'node down') : call.params ?? 'node'));
  const component = await import(pathToFileURL(join(work, 'out/probe.js')).href);

  assert.throws(() => component.configure('{"tagg": 1}'), (e) => e.payload === 'invalid configuration: unknown field `tagg`, expected `tag`');
  assert.deepEqual(component.configure('{"tag": "t"}'), { onCall: true, onResult: true });
  assert.deepEqual(host.selected, [[['skip_*'], true]]);

  const probe = component.onCall({ method: 'probe', params: '{"a":[1]}' });
  assert.equal(probe.tag, 'respond');
  assert.equal(probe.val.tag, 'ok');
  assert.deepEqual(JSON.parse(probe.val.val), {
    ctx: ['test-instance', 'test-binding', 'test-plan', 'test-request'],
    now: 1_700_000_000_000,
    kv: ['v', 5, 5, -1, true, true, null],
    incrType: 'number',
    up: [],
    upErr: { code: -32000, message: 'node down' },
    upThrown: 'RpcError: -32000 node down',
    params: { a: [1] },
    kvErr: 'KvError: value at `k` is not an integer',
  });
  assert.deepEqual(host.logs, [['info', 'probe t']]);

  const raise = component.onCall({ method: 'raise', params: undefined });
  assert.deepEqual(raise, { tag: 'respond', val: { tag: 'err', val: { code: -32603, message: 'plugin failed in onCall: boom', data: undefined } } });
  assert.match(host.logs.at(-1)[1], /^plugin failed in onCall: Error: boom/);
  assert.deepEqual(component.onCall({ method: 'rpc' }).val.val, { code: -32005, message: 'slow down', data: '{"retry_after_ms":5}' });

  const fwd = component.onCall({ method: 'rewrite', params: '[1]' });
  assert.deepEqual(fwd, { tag: 'forward', val: { method: 'rewrite', params: '["rewritten"]' } });
  const result = component.onResult(fwd.val, { tag: 'ok', val: '"r"' });
  assert.deepEqual(Outcome.fromWit(result).result, { sent: ['rewritten'], got: 'r' });
  assert.deepEqual(component.onResult({ method: 'raise_late' }, { tag: 'ok', val: '1' }).val.message, 'plugin failed in onResult: late');
  assert.deepEqual(component.onResult({ method: 'other' }, { tag: 'err', val: { code: 1, message: 'x' } }), { tag: 'err', val: { code: 1, message: 'x', data: undefined } });
});
