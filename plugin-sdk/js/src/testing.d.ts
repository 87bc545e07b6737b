import type { Call, Context, HostImports, Level, Methods, Outcome, Plugin } from './index.js';

export declare function testContext(): { instanceId: string; bindingId: string | null; plan: string; requestId: string };

export declare class MockHost implements HostImports {
  static install(): MockHost;
  static last: MockHost | null;
  use(): this;
  context: { instanceId: string; bindingId: string | null; plan: string; requestId: string };
  declined: { onCall: boolean; onResult: boolean };
  selected: Array<[string[], boolean]>;
  now: number;
  upstreamCalls: Call[];
  logs: Array<[Level, string]>;
  setContext(context: Partial<MockHost['context']>): void;
  setUpstream(f: (call: Call) => Outcome | unknown): void;
  setNowMs(ms: number): void;
  advanceMs(ms: number): void;
  logLines(level?: Level): string[];
  reset(): void;
  callContext: HostImports['callContext'];
  log: HostImports['log'];
  upstream: HostImports['upstream'];
  nowMs: HostImports['nowMs'];
  declineHook: HostImports['declineHook'];
  selectMethods: HostImports['selectMethods'];
  kvGet: HostImports['kvGet'];
  kvSet: HostImports['kvSet'];
  kvIncr: HostImports['kvIncr'];
  kvCompareAndSwap: HostImports['kvCompareAndSwap'];
  kvDelete: HostImports['kvDelete'];
}

export declare class Harness<P extends Plugin = Plugin> {
  constructor(PluginClass: new (...args: any[]) => P, config?: string | object | null, options?: { host?: MockHost });
  readonly host: MockHost;
  readonly hooks: { onCall: boolean; onResult: boolean };
  readonly methods: Methods;
  readonly plugin: P;
  call(method: string, params?: unknown): Outcome;
  callRaw(method: string, paramsText?: string): Outcome;
  run(call: Call): Outcome;
}

export { Context };
