// Types of @ovsb/plugin-sdk (the SDK's own API; the WIT-level shapes are ComponentizeJS's).

export declare const codes: Readonly<{
  PARSE_ERROR: -32700;
  INVALID_REQUEST: -32600;
  METHOD_NOT_FOUND: -32601;
  INVALID_PARAMS: -32602;
  INTERNAL_ERROR: -32603;
  LIMIT_EXCEEDED: -32005;
}>;
export declare const PARSE_ERROR: -32700;
export declare const INVALID_REQUEST: -32600;
export declare const METHOD_NOT_FOUND: -32601;
export declare const INVALID_PARAMS: -32602;
export declare const INTERNAL_ERROR: -32603;
export declare const LIMIT_EXCEEDED: -32005;

/** Flags of the WIT `hooks` type. */
export interface Hooks {
  onCall: boolean;
  onResult: boolean;
}
export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** The `ovsb:plugin/host@0.1.0` imports, in ComponentizeJS's conventions (what `useHost` takes). */
export interface HostImports {
  callContext(): { instanceId: string; bindingId?: string; plan: string; requestId: string };
  log(level: Level, message: string): void;
  upstream(call: { method: string; params?: string }): { tag: 'ok'; val: string } | { tag: 'err'; val: { code: number; message: string; data?: string } };
  nowMs(): bigint;
  declineHook(hooks: Partial<Hooks>): void;
  selectMethods(patterns: string[], except: boolean): void;
  kvGet(key: string): Uint8Array | undefined;
  kvSet(key: string, value: Uint8Array, ttlMs?: bigint): void;
  kvIncr(key: string, delta: bigint, ttlMs?: bigint): bigint;
  kvCompareAndSwap(key: string, expected: Uint8Array | undefined, next: Uint8Array, ttlMs?: bigint): boolean;
  kvDelete(key: string): boolean;
}
export declare function useHost(imports: HostImports): void;

export declare class KvError extends Error {}
export declare function nowMs(): number;
/** The node's result as a JS value; throws its (or the host's) `RpcError` otherwise. As Python's `upstream`. */
export declare function upstream(call: Call | { method: string; params?: unknown }): any;
export declare function upstream(method: string, params?: unknown): any;
/** The node's answer as an `Outcome` (result or error). As Python's `upstream_raw`. */
export declare function upstreamRaw(call: Call | { method: string; params?: unknown }): Outcome;
export declare function upstreamRaw(method: string, params?: unknown): Outcome;

export declare const log: Readonly<{
  write(level: Level, message: string): void;
  trace(message: string): void;
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}>;

export interface KvOptions {
  /** The entry expires after this many milliseconds. */
  ttlMs?: number | bigint;
}
export declare const kv: Readonly<{
  get(key: string): Uint8Array | undefined;
  getText(key: string): string | undefined;
  getJson<T = unknown>(key: string): T | undefined;
  set(key: string, value: string | Uint8Array, options?: KvOptions): void;
  setJson(key: string, value: unknown, options?: KvOptions): void;
  /** The integer at `key` (as `incr` stores it); `fallback` (default 0) if absent, expired or not an integer. */
  getInt(key: string, fallback?: number): number;
  /** The sum, as a JS number (exact up to 2^53 - 1 in magnitude; beyond, a RangeError). */
  incr(key: string, delta?: number | bigint, options?: KvOptions): number;
  compareAndSwap(key: string, expected: string | Uint8Array | undefined, next: string | Uint8Array, options?: KvOptions): boolean;
  delete(key: string): boolean;
}>;

export declare class Context {
  constructor(value?: ReturnType<HostImports['callContext']>);
  readonly instanceId: string;
  readonly bindingId: string | null;
  readonly plan: string;
  readonly requestId: string;
}

export declare function jsonKind(value: unknown): string;

export declare class RpcError extends Error {
  constructor(code: number, message: string, data?: unknown);
  static withRawData(code: number, message: string, dataText?: string): RpcError;
  readonly code: number;
  dataText: string | undefined;
  readonly data: unknown;
  toJSON(): { code: number; message: string; data?: unknown };
}

export declare class Call {
  constructor(method: string, paramsText?: string);
  static withParams(method: string, params?: unknown): Call;
  method: string;
  readonly params: any;
  readonly paramsText: string | undefined;
  setParams(value: unknown): this;
  setParamsText(text: string | undefined): this;
}

export declare class Outcome {
  constructor(resultText: string | undefined, error: RpcError | undefined);
  readonly resultText: string | undefined;
  readonly error: RpcError | undefined;
  readonly isOk: boolean;
  readonly result: any;
  unwrap(): any;
  toJSON(): { result: unknown } | { error: { code: number; message: string; data?: unknown } };
  static fromWit(o: ReturnType<HostImports['upstream']>): Outcome;
}
export declare function ok(value: unknown): Outcome;
export declare function okRaw(json: string): Outcome;
export declare function err(error: RpcError): Outcome;
export declare function err(code: number, message: string, data?: unknown): Outcome;

export declare class Decision {
  readonly call: Call | undefined;
  readonly outcome: Outcome | undefined;
}
export declare function forward(call: Call): Decision;
export declare function respond(outcome: Outcome): Decision;
export declare function respondOk(value: unknown): Decision;
export declare function respondErr(error: RpcError): Decision;
export declare function respondErr(code: number, message: string, data?: unknown): Decision;

export declare function globMatches(pattern: string, text: string): boolean;
export declare class Methods {
  constructor(rules: Array<[string[], boolean]> | null);
  readonly rules: Array<[string[], boolean]> | null;
  static all(): Methods;
  static matching(patterns: Iterable<string>): Methods;
  static notMatching(patterns: Iterable<string>): Methods;
  or(other: Methods): Methods;
  sees(method: string): boolean;
  declare(): void;
}

export declare class ConfigError extends Error {
  constructor(message: string);
}
export interface FieldSpec {
  type: 'string' | 'integer' | 'number' | 'boolean' | 'array' | 'object' | 'any';
  /** A field without a default is required. */
  default?: unknown;
  example?: unknown;
  min?: number;
  max?: number;
  oneOf?: unknown[];
  check?(value: any): string | undefined | void;
}
export declare class Config {
  constructor(json: string);
  readonly json: string;
  readonly value: JsonValue;
  object(example: string, fields: string[]): Record<string, JsonValue>;
  parse<S extends Record<string, FieldSpec>>(spec: S, example?: string): { [K in keyof S]: any };
}

export declare class Plugin {
  static configure<T extends Plugin>(this: new (config: Config) => T, config: Config): T;
  hooks(): Hooks;
  methods(): Methods;
  /** The context comes first, as in the Python and Rust SDKs. */
  onCall(ctx: Context, call: Call): Decision | Call | Outcome;
  onResult(ctx: Context, call: Call, outcome: Outcome): Outcome;
}

/** The world's exports for a plugin class (used by the generated entry and by Harness). */
export declare function exportPlugin(PluginClass: typeof Plugin): {
  configure(config: string): Hooks;
  onCall(call: { method: string; params?: string }): unknown;
  onResult(call: { method: string; params?: string }, outcome: unknown): unknown;
  readonly plugin: Plugin | null;
};
