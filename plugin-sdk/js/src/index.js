// @ovsb/plugin-sdk: write ovsb JSON-RPC plugins in JavaScript.
//
// A plugin is an ES module whose default export is a class extending `Plugin`. `build.mjs`
// bundles it with a generated entry module that imports `ovsb:plugin/host@0.1.0` and hands it to
// this SDK (`useHost`), then ComponentizeJS turns the bundle into a WebAssembly component of the
// world `plugin` (wit/plugin.wit). Natively (node --test), `MockHost` from
// `@ovsb/plugin-sdk/testing` takes the host's place.
//
// Values at the host boundary follow ComponentizeJS's conventions (checked by the SDK's tests
// against a built component): u64/s64 are BigInt, option<T> is `undefined` or T, flags are
// `{ onCall, onResult }`, the `outcome` type is `{ tag: 'ok' | 'err', val }`, an inline
// `result<T, E>` returns T or throws an error whose `payload` is E.

/** JSON-RPC error codes used by ovsb and its first-party plugins. */
export const codes = Object.freeze({
  /** The JSON sent is not valid JSON. */
  PARSE_ERROR: -32700,
  /** The JSON sent is not a valid request object. */
  INVALID_REQUEST: -32600,
  /** The method does not exist or is not available on this endpoint. */
  METHOD_NOT_FOUND: -32601,
  /** Invalid method parameters. */
  INVALID_PARAMS: -32602,
  /** Internal JSON-RPC error; ovsb also uses it when a plugin fails (trap, limit). */
  INTERNAL_ERROR: -32603,
  /** A limit was exceeded (rate limit, quota); `data` may say when to retry. */
  LIMIT_EXCEEDED: -32005,
});
export const { PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR, LIMIT_EXCEEDED } = codes;

// ---------------------------------------------------------------------------------------------
// The host

let host = null;

/**
 * Sets the object that serves the `ovsb:plugin/host@0.1.0` imports: the component's import
 * (done by the entry module `build.mjs` generates) or a `MockHost` in native tests.
 */
export function useHost(imports) {
  host = imports;
}

function theHost() {
  if (host === null) {
    throw new Error(
      'no ovsb host: in a component the generated entry sets it; in native tests create one with ' +
        "`MockHost.install()` from '@ovsb/plugin-sdk/testing'",
    );
  }
  return host;
}

const toU64 = (ms, what) => {
  if (ms === undefined || ms === null) return undefined;
  const n = BigInt(ms);
  if (n < 0n || n > 0xffffffffffffffffn) throw new RangeError(`${what} must be between 0 and 2^64-1, got ${ms}`);
  return n;
};

const toNumber = (big) => {
  const n = Number(big);
  if (!Number.isSafeInteger(n)) throw new RangeError(`${big} is beyond JavaScript's safe integers`);
  return n;
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const toBytes = (value, what) => {
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return encoder.encode(value);
  throw new TypeError(`${what} must be a string or a Uint8Array, got ${typeof value}`);
};

// Errors of inline `result<_, string>` imports arrive thrown, with the string as `payload`.
const hostErrorText = (err) => (err && typeof err.payload === 'string' ? err.payload : String(err?.message ?? err));

/** An error the key-value store reported (key or value too large, store full, not an integer…). */
export class KvError extends Error {
  constructor(message) {
    super(message);
    this.name = 'KvError';
  }
}

/** Milliseconds since the Unix epoch, from the host's wall clock (the mock's clock in tests). */
export function nowMs() {
  return toNumber(theHost().nowMs());
}

const toCall = (callOrMethod, params) =>
  callOrMethod instanceof Call
    ? callOrMethod
    : typeof callOrMethod === 'string'
      ? Call.withParams(callOrMethod, params)
      : Call.withParams(callOrMethod.method, callOrMethod.params);

/**
 * Calls the instance's node directly, bypassing the rest of the chain, and returns its `Outcome`
 * (an error one when the node fails, times out, or the per-call cap on upstream calls is
 * reached). `upstreamRaw(call)` with a `Call` or `{ method, params }` (params as a JS value), or
 * `upstreamRaw(method, params)`. As Python's `upstream_raw`.
 */
export function upstreamRaw(callOrMethod, params) {
  return Outcome.fromWit(theHost().upstream(toCall(callOrMethod, params).toWit()));
}

/**
 * Calls the instance's node directly, bypassing the rest of the chain, and returns its result
 * as a JS value (parsed from JSON); throws the node's (or the host's) `RpcError` otherwise: when
 * the node answers an error, fails, times out, or the per-call cap on upstream calls is reached.
 * Letting the error escape a hook answers the client's call with it. Same arguments as
 * `upstreamRaw`; as Python's `upstream`.
 */
export function upstream(callOrMethod, params) {
  return upstreamRaw(callOrMethod, params).unwrap();
}

/** Log lines, tagged by the host with the plugin's name and instance id; rate-limited, 4 KiB max. */
export const log = Object.freeze({
  /** Writes `message` at `level` ('trace' | 'debug' | 'info' | 'warn' | 'error'). */
  write(level, message) {
    if (!LEVELS.includes(level)) throw new TypeError(`log level must be one of ${LEVELS.join(', ')}, got ${level}`);
    theHost().log(level, String(message));
  },
  trace: (message) => log.write('trace', message),
  debug: (message) => log.write('debug', message),
  info: (message) => log.write('info', message),
  warn: (message) => log.write('warn', message),
  error: (message) => log.write('error', message),
});
const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];
// What Python's int() takes from bytes: ASCII whitespace around, a sign, `_` between digits.
const INT_TEXT = /^[ \t\n\v\f\r]*[+-]?[0-9](?:_?[0-9])*[ \t\n\v\f\r]*$/;

/**
 * The key-value store of the service instance, shared by every copy of this plugin serving it.
 * Values are bytes (`Uint8Array`); strings are stored as UTF-8. `ttlMs` makes an entry expire.
 * Failures the store reports throw `KvError`.
 */
export const kv = Object.freeze({
  /** The value at `key` as bytes, or `undefined` if absent or expired. */
  get(key) {
    return theHost().kvGet(String(key)) ?? undefined;
  },
  /** The value at `key` as UTF-8 text, or `undefined`. */
  getText(key) {
    const bytes = kv.get(key);
    return bytes === undefined ? undefined : decoder.decode(bytes);
  },
  /** The value at `key` parsed as JSON (stored with `setJson`), or `undefined`. */
  getJson(key) {
    const text = kv.getText(key);
    return text === undefined ? undefined : JSON.parse(text);
  },
  /** Stores `value` (string or Uint8Array), replacing any previous one. */
  set(key, value, { ttlMs } = {}) {
    try {
      theHost().kvSet(String(key), toBytes(value, 'kv value'), toU64(ttlMs, 'ttlMs'));
    } catch (err) {
      throw new KvError(hostErrorText(err));
    }
  },
  /** Stores `JSON.stringify(value)`. */
  setJson(key, value, options) {
    kv.set(key, JSON.stringify(value), options);
  },
  /**
   * The integer at `key` (as `incr` stores it: decimal text) as a number; `fallback` (default 0)
   * if absent, expired or not an integer. As Python's `kv.get_int`, it accepts what Python's
   * `int()` does: ASCII whitespace around, a sign, `_` between digits. An integer beyond
   * JavaScript's safe integers (±(2^53 − 1)) throws a RangeError rather than lose precision.
   */
  getInt(key, fallback = 0) {
    const text = kv.getText(key);
    if (text === undefined || !INT_TEXT.test(text)) return fallback;
    return toNumber(BigInt(text.trim().replaceAll('_', '')));
  },
  /**
   * Atomically adds `delta` (default 1) to the integer at `key` (absent counts as 0) and returns
   * the sum. `ttlMs` applies when the key is created. The host's counter is a 64-bit integer (a
   * BigInt in the component binding); `incr` returns it as a JS number, exact up to 2^53 − 1 in
   * magnitude, and throws a RangeError for a sum beyond that rather than lose precision.
   */
  incr(key, delta = 1, { ttlMs } = {}) {
    let sum;
    try {
      sum = theHost().kvIncr(String(key), BigInt(delta), toU64(ttlMs, 'ttlMs'));
    } catch (err) {
      throw new KvError(hostErrorText(err));
    }
    return toNumber(sum);
  },
  /**
   * Atomically replaces the value at `key` with `next` if the present value equals `expected`
   * (`undefined`: absent or expired). Returns whether it did.
   */
  compareAndSwap(key, expected, next, { ttlMs } = {}) {
    const want = expected === undefined || expected === null ? undefined : toBytes(expected, 'expected');
    try {
      return theHost().kvCompareAndSwap(String(key), want, toBytes(next, 'kv value'), toU64(ttlMs, 'ttlMs'));
    } catch (err) {
      throw new KvError(hostErrorText(err));
    }
  },
  /** Removes `key`; returns whether it was present. */
  delete(key) {
    return theHost().kvDelete(String(key));
  },
});

/**
 * Who is calling: instance, binding, plan and a request id unique to the call. Fetched from the
 * host on first read (plugins that never look pay nothing). During `configure` only `instanceId`
 * is set.
 */
export class Context {
  #value;
  constructor(value) {
    this.#value = value;
  }
  #get() {
    this.#value ??= theHost().callContext();
    return this.#value;
  }
  /** The service instance whose endpoint was called. */
  get instanceId() {
    return this.#get().instanceId;
  }
  /** The binding whose credentials were used, or `null` (e.g. the operator's health checks). */
  get bindingId() {
    return this.#get().bindingId ?? null;
  }
  /** The plan id of the instance. */
  get plan() {
    return this.#get().plan;
  }
  /** An id unique to this call, also in ovsb's logs and in the request to the node. */
  get requestId() {
    return this.#get().requestId;
  }
}

// ---------------------------------------------------------------------------------------------
// Calls, errors, outcomes, decisions

const kind = (value) =>
  value === null
    ? 'null'
    : Array.isArray(value)
      ? 'an array'
      : typeof value === 'object'
        ? 'an object'
        : typeof value === 'string'
          ? 'a string'
          : typeof value === 'number'
            ? 'a number'
            : typeof value === 'boolean'
              ? 'a boolean'
              : typeof value;
/** What kind of JSON value `value` is, for messages ("a number", "an array", …). */
export const jsonKind = kind;

const toJson = (value, what) => {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`${what} does not serialize to JSON (${typeof value})`);
  return text;
};

/** A JSON-RPC error. Throw it from a hook to answer the call with it. */
export class RpcError extends Error {
  /**
   * @param {number} code JSON-RPC error code (see `codes`)
   * @param {string} message short human-readable message
   * @param {*} [data] any JSON value for the `data` member (omit for none)
   */
  constructor(code, message, data) {
    super(message);
    this.name = 'RpcError';
    if (!Number.isInteger(code) || code < -(2 ** 31) || code >= 2 ** 31) {
      throw new TypeError(`an RpcError code must be a 32-bit integer, got ${code}`);
    }
    this.code = code;
    this.dataText = data === undefined ? undefined : toJson(data, 'RpcError data');
  }
  /** An error whose `data` is given as JSON text. */
  static withRawData(code, message, dataText) {
    const err = new RpcError(code, message);
    err.dataText = dataText ?? undefined;
    return err;
  }
  /** The `data` member parsed, or `undefined`. */
  get data() {
    return this.dataText === undefined ? undefined : JSON.parse(this.dataText);
  }
  toWit() {
    return { code: this.code, message: this.message, data: this.dataText };
  }
  static fromWit(e) {
    return RpcError.withRawData(e.code, e.message, e.data ?? undefined);
  }
  toJSON() {
    const out = { code: this.code, message: this.message };
    if (this.dataText !== undefined) out.data = this.data;
    return out;
  }
}

/** One JSON-RPC call: `method` and `params` (parsed from the JSON text on first read). */
export class Call {
  #text;
  #parsed;
  #hasParsed = false;
  /**
   * @param {string} method
   * @param {string} [paramsText] the JSON text of `params`; `undefined` for none
   */
  constructor(method, paramsText) {
    this.method = method;
    this.#text = paramsText ?? undefined;
  }
  /** A call whose params are `params` serialized to JSON (`undefined`: no params). */
  static withParams(method, params) {
    return new Call(method, params === undefined ? undefined : toJson(params, 'params'));
  }
  /** The params as a JS value (`undefined` when the call has none). Invalid JSON throws an INVALID_PARAMS RpcError. */
  get params() {
    if (!this.#hasParsed) {
      if (this.#text !== undefined) {
        try {
          this.#parsed = JSON.parse(this.#text);
        } catch (err) {
          throw new RpcError(INVALID_PARAMS, `invalid params for ${this.method}: ${err.message}`);
        }
      }
      this.#hasParsed = true;
    }
    return this.#parsed;
  }
  /** The JSON text of params as received (or as last set), `undefined` when none. */
  get paramsText() {
    return this.#text;
  }
  /** Replaces params with `value` serialized to JSON (`undefined` removes them). */
  setParams(value) {
    this.#text = value === undefined ? undefined : toJson(value, 'params');
    this.#parsed = undefined;
    this.#hasParsed = false;
    return this;
  }
  /** Replaces params with JSON text, as is. */
  setParamsText(text) {
    this.#text = text ?? undefined;
    this.#parsed = undefined;
    this.#hasParsed = false;
    return this;
  }
  toWit() {
    return { method: this.method, params: this.#text };
  }
  static fromWit(c) {
    return new Call(c.method, c.params ?? undefined);
  }
  toJSON() {
    return { method: this.method, params: this.#text };
  }
}

/** The answer to a call: a result (JSON text, parsed on demand) or an `RpcError`. */
export class Outcome {
  #value;
  #hasValue = false;
  constructor(resultText, error) {
    this.resultText = resultText;
    this.error = error;
  }
  /** Whether it is a result (not an error). */
  get isOk() {
    return this.error === undefined;
  }
  /** The result parsed from its JSON text (`undefined` for an error outcome). */
  get result() {
    if (!this.isOk) return undefined;
    if (!this.#hasValue) {
      this.#value = JSON.parse(this.resultText);
      this.#hasValue = true;
    }
    return this.#value;
  }
  /** The result value, or throws the error (which, uncaught in a hook, answers the call with it). */
  unwrap() {
    if (!this.isOk) throw this.error;
    return this.result;
  }
  toWit() {
    return this.isOk ? { tag: 'ok', val: this.resultText } : { tag: 'err', val: this.error.toWit() };
  }
  static fromWit(o) {
    return o.tag === 'ok' ? new Outcome(o.val, undefined) : new Outcome(undefined, RpcError.fromWit(o.val));
  }
  toJSON() {
    return this.isOk ? { result: this.result } : { error: this.error.toJSON() };
  }
}

/** A successful outcome whose result is `value` serialized to JSON. */
export const ok = (value) => new Outcome(toJson(value === undefined ? null : value, 'result'), undefined);
/** A successful outcome from the JSON text of the result, as is. */
export const okRaw = (json) => new Outcome(String(json), undefined);
/** An error outcome: `err(rpcError)` or `err(code, message, data?)`. */
export const err = (codeOrError, message, data) =>
  new Outcome(undefined, codeOrError instanceof RpcError ? codeOrError : new RpcError(codeOrError, message, data));

/** What `onCall` decided. Build one with `forward`, `respond`, `respondOk`, `respondErr`. */
export class Decision {
  constructor(call, outcome) {
    this.call = call;
    this.outcome = outcome;
  }
  toWit() {
    return this.outcome === undefined
      ? { tag: 'forward', val: this.call.toWit() }
      : { tag: 'respond', val: this.outcome.toWit() };
  }
}
// The hooks' argument order changed (ctx first, as the Python and Rust SDKs): a hook written
// the old way hands a Context where a Call belongs. Say so rather than fail obscurely.
const ORDER_HINT = 'the hooks are onCall(ctx, call) and onResult(ctx, call, outcome), the context first';
const notACall = (value, what) =>
  new TypeError(`${what} takes a Call, not ${value instanceof Context ? `a Context (${ORDER_HINT})` : kind(value)}`);

/** Pass `call` (rewritten or not) to the next plugin, or to the node after the last. */
export const forward = (call) => {
  if (!(call instanceof Call)) throw notACall(call, 'forward');
  return new Decision(call, undefined);
};
/** Answer the call with `outcome`; the rest of the chain and the node are skipped. */
export const respond = (outcome) => new Decision(undefined, outcome);
/** Answer the call with `value` as result. */
export const respondOk = (value) => respond(ok(value));
/** Answer the call with an error: `respondErr(rpcError)` or `respondErr(code, message, data?)`. */
export const respondErr = (codeOrError, message, data) => respond(err(codeOrError, message, data));

// ---------------------------------------------------------------------------------------------
// Method selection

/**
 * Whether `text` matches the glob `pattern` as a whole: `*` matches any run of characters (also
 * none), `?` exactly one character (a Unicode code point); every other character matches itself,
 * case-sensitively. The same rules as ovsb's host.
 */
export function globMatches(pattern, text) {
  const p = Array.from(pattern);
  const t = Array.from(text);
  let pi = 0;
  let ti = 0;
  let star = -1;
  let from = 0;
  while (ti < t.length) {
    if (p[pi] === '*') {
      star = pi;
      from = ti;
      pi += 1;
    } else if (pi < p.length && (p[pi] === '?' || p[pi] === t[ti])) {
      pi += 1;
      ti += 1;
    } else if (star >= 0) {
      from += 1;
      pi = star + 1;
      ti = from;
    } else {
      return false;
    }
  }
  return p.slice(pi).every((c) => c === '*');
}

/**
 * The calls a plugin sees (see `Plugin#methods`): every call, or those whose method a set of
 * globs takes. ovsb passes the other calls by without calling into wasm.
 */
export class Methods {
  /** @param {null | Array<[string[], boolean]>} rules `null`: every call */
  constructor(rules) {
    this.rules = rules;
  }
  /** Every call (the default). */
  static all() {
    return new Methods(null);
  }
  /** The calls whose method matches one of `patterns` (none, if empty). */
  static matching(patterns) {
    return new Methods([[Array.from(patterns, String), false]]);
  }
  /** The calls whose method matches none of `patterns`. */
  static notMatching(patterns) {
    return new Methods([[Array.from(patterns, String), true]]);
  }
  /** The calls that either takes. */
  or(other) {
    if (this.rules === null || other.rules === null) return Methods.all();
    return new Methods([...this.rules, ...other.rules]);
  }
  /** Whether a call of `method` is seen. */
  sees(method) {
    if (this.rules === null) return true;
    return this.rules.some(([patterns, except]) => patterns.some((p) => globMatches(p, method)) !== except);
  }
  /** Tells the host (`select-methods`); nothing for every call. */
  declare() {
    for (const [patterns, except] of this.rules ?? []) theHost().selectMethods(patterns, except);
  }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/** A configuration the plugin refuses; its message is what the operator sees (a 400). */
export class ConfigError extends Error {
  constructor(message) {
    super(message.startsWith('invalid configuration') ? message : `invalid configuration: ${message}`);
    this.name = 'ConfigError';
  }
}

const orList = (items) =>
  items.length === 0 ? 'no fields' : items.length === 1 ? items[0] : `${items.slice(0, -1).join(', ')} or ${items.at(-1)}`;

const TYPES = {
  string: [(v) => typeof v === 'string', 'a string'],
  integer: [(v) => Number.isSafeInteger(v), 'an integer'],
  number: [(v) => typeof v === 'number' && Number.isFinite(v), 'a number'],
  boolean: [(v) => typeof v === 'boolean', 'a boolean'],
  array: [(v) => Array.isArray(v), 'an array'],
  object: [(v) => v !== null && typeof v === 'object' && !Array.isArray(v), 'an object'],
  any: [() => true, 'any JSON value'],
};

/** A plugin's configuration: the JSON text of the `config` member of its chain entry. */
export class Config {
  /** @param {string} json the JSON text (`null` when none was given) */
  constructor(json) {
    this.json = json;
  }
  /** The configuration parsed (`null` when none was given); invalid JSON throws a ConfigError. */
  get value() {
    try {
      return JSON.parse(this.json);
    } catch (e) {
      throw new ConfigError(`not JSON: ${e.message}`);
    }
  }
  /**
   * The configuration as an object whose keys are all in `fields` (`null` reads as `{}`).
   * `example` is shown when it is not an object, e.g. `{"max_items": 16}`. Errors read like
   * ``invalid configuration: unknown field `greting`, expected `greeting` ``.
   */
  object(example, fields) {
    let value = this.value;
    if (value === null) value = {};
    if (kind(value) !== 'an object') {
      throw new ConfigError(`expected an object like ${example}, got ${kind(value)}`);
    }
    const unknown = Object.keys(value).find((key) => !fields.includes(key));
    if (unknown !== undefined) {
      throw new ConfigError(`unknown field \`${unknown}\`, expected ${orList(fields.map((f) => `\`${f}\``))}`);
    }
    return value;
  }
  /**
   * Parses and checks the configuration against `spec`, an object of field specifications:
   * `{ greeting: { type: 'string', default: 'hello' }, cache_ms: { type: 'integer', min: 0, default: 1000 } }`.
   * A field spec has `type` ('string' | 'integer' | 'number' | 'boolean' | 'array' | 'object' |
   * 'any'), optional `default` (a field without one is required), `min` / `max` (numbers; for
   * strings and arrays, lengths), `oneOf` (allowed values) and `check(value)` returning an error
   * message or nothing. Unknown fields are refused. Returns a fresh object with defaults filled in.
   */
  parse(spec, example) {
    const fields = Object.keys(spec);
    example ??= JSON.stringify(
      Object.fromEntries(fields.map((f) => [f, spec[f].default ?? spec[f].example ?? `<${spec[f].type}>`])),
    );
    const given = this.object(example, fields);
    const out = {};
    for (const [name, field] of Object.entries(spec)) {
      const [isType, typeName] = TYPES[field.type] ?? TYPES.any;
      if (!(name in given) || given[name] === null) {
        if (!('default' in field)) throw new ConfigError(`missing field \`${name}\` (${typeName}), e.g. ${example}`);
        out[name] = structuredClone(field.default);
        continue;
      }
      const value = given[name];
      if (!isType(value)) throw new ConfigError(`\`${name}\` must be ${typeName}, got ${kind(value)}`);
      const size = typeof value === 'number' ? value : value?.length;
      const unit = typeof value === 'number' ? '' : typeof value === 'string' ? ' characters' : ' items';
      const sizeWhat = typeof value === 'number' ? `\`${name}\`` : `the length of \`${name}\``;
      if (field.min !== undefined && size < field.min) {
        throw new ConfigError(`${sizeWhat} must be at least ${field.min}${unit}, got ${size}`);
      }
      if (field.max !== undefined && size > field.max) {
        throw new ConfigError(`${sizeWhat} must be at most ${field.max}${unit}, got ${size}`);
      }
      if (field.oneOf !== undefined && !field.oneOf.includes(value)) {
        throw new ConfigError(
          `\`${name}\` must be ${orList(field.oneOf.map((v) => JSON.stringify(v)))}, got ${JSON.stringify(value)}`,
        );
      }
      const problem = field.check?.(value);
      if (problem) throw new ConfigError(`\`${name}\` ${problem}`);
      out[name] = value;
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// The plugin

/**
 * A plugin. Extend it and export the class as the module's default export:
 *
 * ```js
 * import { Plugin, Methods, respondOk } from '@ovsb/plugin-sdk';
 * export default class Hello extends Plugin {
 *   constructor(config) { super(); this.greeting = config.parse({ greeting: { type: 'string', default: 'hello' } }).greeting; }
 *   methods() { return Methods.matching(['hello_world']); }
 *   onCall(ctx, call) { return respondOk(`${this.greeting} from ${ctx.instanceId}`); }
 * }
 * ```
 *
 * Every hook has a pass-through default that also tells ovsb (`decline-hook`) so it stops
 * calling it. ovsb runs several copies side by side and reuses a copy for many calls: `this` may
 * carry state between calls of one copy; state every copy must see belongs in `kv`.
 */
export class Plugin {
  /**
   * Builds the plugin from its configuration; runs for every new copy. Throw a `ConfigError`
   * (or any Error / string) to refuse it: the message is shown to the operator as a 400.
   * The default is `new this(config)`, so a constructor taking a `Config` is enough.
   */
  static configure(config) {
    return new this(config);
  }
  /** The hooks this plugin implements; ovsb skips the others. Default: both. */
  hooks() {
    return { onCall: true, onResult: true };
  }
  /** The calls this plugin sees (asked once, after configure). Default: every call. */
  methods() {
    return Methods.all();
  }
  /**
   * Sees a call on its way to the node. Return `forward(call)` (or the call itself) to pass it on,
   * `respond(outcome)` / `respondOk(value)` / `respondErr(...)` to answer it; throwing an
   * `RpcError` answers with it. The default forwards and declines the hook.
   * The context comes first, as in the Python and Rust SDKs.
   * @param {Context} ctx who is calling
   * @param {Call} call the call
   */
  onCall(ctx, call) {
    theHost().declineHook({ onCall: true, onResult: false });
    return forward(call);
  }
  /**
   * Sees the outcome of a call this plugin forwarded (`call` as it forwarded it). Return an
   * `Outcome` (the one given to pass it through, or `ok(value)`, `okRaw(json)`, `err(...)`).
   * The default passes it through and declines the hook.
   * @param {Context} ctx who is calling
   * @param {Call} call the call as this plugin forwarded it
   * @param {Outcome} outcome the answer from further down the chain (or the node)
   */
  onResult(ctx, call, outcome) {
    theHost().declineHook({ onCall: false, onResult: true });
    return outcome;
  }
}

// ---------------------------------------------------------------------------------------------
// The glue: the world's exports in terms of a Plugin class

const messageOf = (e) => (e instanceof Error ? e.message : String(e));

function failure(hook, e) {
  if (e instanceof RpcError) return e;
  let detail = String(e);
  if (e instanceof Error) {
    // V8's stack starts with "Name: message", SpiderMonkey's (in the component) does not.
    const head = `${e.name}: ${e.message}`;
    detail = !e.stack ? head : e.stack.startsWith(head) ? e.stack : `${head}\n${e.stack}`;
  }
  try {
    log.error(`plugin failed in ${hook}: ${detail}`);
  } catch {
    // A log over the rate limit must not hide the failure from the client.
  }
  return new RpcError(INTERNAL_ERROR, `plugin failed in ${hook}: ${messageOf(e)}`);
}

/**
 * The world's exports (`configure`, `onCall`, `onResult`, in ComponentizeJS's value conventions)
 * for the plugin class `PluginClass`. The entry module that `build.mjs` generates re-exports them;
 * `Harness` drives a plugin through them too, so native tests run the same glue.
 */
export function exportPlugin(PluginClass) {
  if (typeof PluginClass !== 'function' || !(PluginClass.prototype instanceof Plugin)) {
    throw new TypeError('the default export of a plugin module must be a class that extends Plugin');
  }
  let plugin = null;
  const notConfigured = () => new RpcError(INTERNAL_ERROR, 'plugin called before `configure` succeeded');
  return {
    /** configure: func(config: string) -> result<hooks, string>; an err is thrown as a string. */
    configure(configText) {
      try {
        const made = PluginClass.configure(new Config(configText));
        if (!(made instanceof Plugin)) throw new TypeError(`${PluginClass.name}.configure did not return a Plugin`);
        const hooks = made.hooks();
        made.methods().declare();
        plugin = made;
        return { onCall: Boolean(hooks.onCall), onResult: Boolean(hooks.onResult) };
      } catch (e) {
        plugin = null;
        // ComponentizeJS turns a thrown string into the `err` of the result.
        throw e instanceof ConfigError || typeof e === 'string' ? messageOf(e) : `invalid configuration: ${messageOf(e)}`;
      }
    },
    /** on-call: func(call: call) -> decision */
    onCall(witCall) {
      try {
        if (plugin === null) throw notConfigured();
        const call = Call.fromWit(witCall);
        const decision = plugin.onCall(new Context(), call);
        if (decision instanceof Decision) return decision.toWit();
        if (decision instanceof Call) return forward(decision).toWit();
        if (decision instanceof Outcome) return respond(decision).toWit();
        const what = decision instanceof Context ? `a Context (${ORDER_HINT})` : kind(decision);
        throw new TypeError(`onCall must return forward(call), respond(outcome) or a Call, not ${what}`);
      } catch (e) {
        return { tag: 'respond', val: { tag: 'err', val: failure('onCall', e).toWit() } };
      }
    },
    /** on-result: func(call: call, outcome: outcome) -> outcome */
    onResult(witCall, witOutcome) {
      try {
        if (plugin === null) throw notConfigured();
        const outcome = plugin.onResult(new Context(), Call.fromWit(witCall), Outcome.fromWit(witOutcome));
        if (outcome instanceof Outcome) return outcome.toWit();
        const what =
          outcome instanceof Call ? `a Call (${ORDER_HINT})` : outcome instanceof Context ? `a Context (${ORDER_HINT})` : kind(outcome);
        throw new TypeError(`onResult must return an Outcome (ok(value), okRaw(json), err(...)), not ${what}`);
      } catch (e) {
        return { tag: 'err', val: failure('onResult', e).toWit() };
      }
    },
    /** The configured plugin (for tests). */
    get plugin() {
      return plugin;
    },
  };
}
