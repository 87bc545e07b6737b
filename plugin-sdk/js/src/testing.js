// Unit-test a plugin natively with `node --test`.
//
// `MockHost.install()` makes a fresh mock host and gives it to the SDK in place of ovsb's
// `ovsb:plugin/host` imports; it speaks the same value conventions as the component's imports,
// so the SDK's wrappers run exactly as in the component. A `Harness` then drives a plugin class
// through the same glue the component exports (configure → onCall → mock upstream → onResult), as
// ovsb runs a one-plugin chain:
//
//   import { MockHost, Harness } from '@ovsb/plugin-sdk/testing';
//   const host = MockHost.install();
//   host.setUpstream((call) => ok(`${call.method} answered`));
//   const harness = new Harness(MyPlugin, { greeting: 'hi' });
//   assert.deepEqual(harness.call('eth_chainId').result, 'eth_chainId answered');

import { Call, Context, Outcome, RpcError, INTERNAL_ERROR, Methods, exportPlugin, useHost } from './index.js';

/** A context for tests: instance `test-instance`, binding `test-binding`, plan `test-plan`. */
export const testContext = () => ({
  instanceId: 'test-instance',
  bindingId: 'test-binding',
  plan: 'test-plan',
  requestId: 'test-request',
});

// Inline `result<_, string>` imports report errors by throwing an error with a `payload`.
class HostError extends Error {
  constructor(payload) {
    super(payload);
    this.payload = payload;
  }
}

const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * A stand-in for ovsb: a settable clock, a scripted upstream, an in-memory key-value store with
 * TTLs, and a record of log lines, upstream calls, declined hooks and selected methods.
 */
export class MockHost {
  constructor() {
    this.context = testContext();
    /** The hooks declined so far (the plugin's pass-through defaults ran). */
    this.declined = { onCall: false, onResult: false };
    /** What the plugin told `select-methods`, in order: `[patterns, except]`. */
    this.selected = [];
    /** The clock, in milliseconds since the Unix epoch. */
    this.now = 1_700_000_000_000;
    this.upstreamFn = null;
    /** The calls that reached the upstream, in order (as `Call`s). */
    this.upstreamCalls = [];
    /** The log lines, in order: `[level, message]`. */
    this.logs = [];
    this.store = new Map();
  }

  /** A fresh mock host, now the SDK's host. */
  static install() {
    return new MockHost().use();
  }

  /** Makes this the SDK's host again (after another was installed). */
  use() {
    useHost(this);
    MockHost.last = this;
    return this;
  }

  /** Sets what `Context` reports (fields left out keep their test values; `bindingId: null` for none). */
  setContext(context) {
    this.context = { ...this.context, ...context };
  }

  /**
   * Answers upstream calls with `f(call)`, which returns an `Outcome` (`ok(value)`, `okRaw`,
   * `err(...)`), or a plain JS value taken as the result, or throws an `RpcError`. Without it,
   * upstream calls fail with an INTERNAL_ERROR saying so.
   */
  setUpstream(f) {
    this.upstreamFn = f;
  }

  /** Sets the clock. */
  setNowMs(ms) {
    this.now = ms;
  }

  /** Moves the clock forward; entries whose TTL runs out expire. */
  advanceMs(ms) {
    this.now += ms;
  }

  /** The log lines at `level` (or all), messages only. */
  logLines(level) {
    return this.logs.filter(([l]) => level === undefined || l === level).map(([, m]) => m);
  }

  /** Forgets the key-value store, the recorded calls and logs; keeps clock and upstream. */
  reset() {
    this.store.clear();
    this.upstreamCalls = [];
    this.logs = [];
  }

  // --- the `ovsb:plugin/host@0.1.0` functions, in ComponentizeJS's value conventions ---

  callContext() {
    const { instanceId, bindingId, plan, requestId } = this.context;
    return { instanceId, bindingId: bindingId ?? undefined, plan, requestId };
  }

  log(level, message) {
    this.logs.push([level, message]);
  }

  upstream(witCall) {
    const call = Call.fromWit(witCall);
    this.upstreamCalls.push(call);
    if (this.upstreamFn === null) {
      return { tag: 'err', val: { code: INTERNAL_ERROR, message: 'no upstream in MockHost: call host.setUpstream' } };
    }
    let answer;
    try {
      answer = this.upstreamFn(call);
    } catch (e) {
      if (e instanceof RpcError) return { tag: 'err', val: e.toWit() };
      throw e;
    }
    if (answer instanceof Outcome) return answer.toWit();
    return { tag: 'ok', val: JSON.stringify(answer === undefined ? null : answer) };
  }

  nowMs() {
    return BigInt(this.now);
  }

  declineHook(hooks) {
    if (hooks.onCall) this.declined.onCall = true;
    if (hooks.onResult) this.declined.onResult = true;
  }

  selectMethods(patterns, except) {
    this.selected.push([[...patterns], except]);
  }

  #live(key) {
    const entry = this.store.get(key);
    if (entry && entry.expiresAt !== undefined && entry.expiresAt <= this.now) {
      this.store.delete(key);
      return undefined;
    }
    return entry;
  }

  #expiry(ttlMs) {
    return ttlMs === undefined ? undefined : this.now + Number(ttlMs);
  }

  kvGet(key) {
    const entry = this.#live(key);
    return entry === undefined ? undefined : new Uint8Array(entry.value);
  }

  kvSet(key, value, ttlMs) {
    this.store.set(key, { value: new Uint8Array(value), expiresAt: this.#expiry(ttlMs) });
  }

  kvIncr(key, delta, ttlMs) {
    const entry = this.#live(key);
    let current = 0n;
    if (entry !== undefined) {
      const text = new TextDecoder().decode(entry.value);
      if (!/^-?\d+$/.test(text)) throw new HostError(`value at \`${key}\` is not an integer`);
      current = BigInt(text);
    }
    const next = current + delta;
    if (next > 2n ** 63n - 1n || next < -(2n ** 63n)) throw new HostError(`integer overflow at \`${key}\``);
    const value = new TextEncoder().encode(next.toString());
    if (entry !== undefined) entry.value = value;
    else this.store.set(key, { value, expiresAt: this.#expiry(ttlMs) });
    return next;
  }

  kvCompareAndSwap(key, expected, next, ttlMs) {
    const entry = this.#live(key);
    const matches =
      expected === undefined ? entry === undefined : entry !== undefined && sameBytes(entry.value, expected);
    if (!matches) return false;
    this.store.set(key, { value: new Uint8Array(next), expiresAt: this.#expiry(ttlMs) });
    return true;
  }

  kvDelete(key) {
    const present = this.#live(key) !== undefined;
    this.store.delete(key);
    return present;
  }
}

/**
 * Runs one plugin the way ovsb runs a one-plugin chain, through the same glue the component
 * exports: `configure`, then per call `onCall`, the mock host's upstream (when forwarded) and
 * `onResult`, skipping the hooks the plugin does not declare and the calls `methods()` does not
 * select.
 */
export class Harness {
  /**
   * @param {typeof import('./index.js').Plugin} PluginClass the plugin class
   * @param {string | object | null} [config] the configuration: JSON text, or a value to serialize
   * @param {{ host?: MockHost }} [options] the mock host (default: the one installed last, or a new one)
   * @throws {Error} with exactly the message ovsb would show the operator, if configure refuses
   */
  constructor(PluginClass, config = null, { host } = {}) {
    this.host = host ?? MockHost.last ?? MockHost.install();
    this.host.use();
    this.exports = exportPlugin(PluginClass);
    const text = typeof config === 'string' ? config : JSON.stringify(config);
    const selectedBefore = this.host.selected.length;
    try {
      this.hooks = this.exports.configure(text);
    } catch (e) {
      throw new Error(typeof e === 'string' ? e : String(e?.message ?? e));
    }
    const rules = this.host.selected.slice(selectedBefore);
    /** What the plugin selected (ovsb too asks once). */
    this.methods = rules.length === 0 ? Methods.all() : new Methods(rules);
  }

  /** The configured plugin, to inspect its state. */
  get plugin() {
    return this.exports.plugin;
  }

  /** Runs a call whose params are `params` (a JS value; `undefined`: none). Returns an `Outcome`. */
  call(method, params) {
    return this.run(Call.withParams(method, params));
  }

  /** Runs a call whose params are JSON text. */
  callRaw(method, paramsText) {
    return this.run(new Call(method, paramsText));
  }

  /** Runs `call` through the chain of this one plugin. */
  run(call) {
    this.host.use();
    let wit = call.toWit();
    if (!this.methods.sees(call.method)) return Outcome.fromWit(this.host.upstream(wit));
    if (this.hooks.onCall) {
      const decision = this.exports.onCall(wit);
      if (decision.tag === 'respond') return Outcome.fromWit(decision.val);
      wit = decision.val;
    }
    const outcome = this.host.upstream(wit);
    return Outcome.fromWit(this.hooks.onResult ? this.exports.onResult(wit, outcome) : outcome);
  }
}
/** The mock host installed last (the one the SDK uses). */
MockHost.last = null;

export { Context };
