// A plugin for benchmarks (built with plugin-sdk/js/build.mjs). Configuration:
//   {"mode": "pass"}     onCall forwards every call unchanged (it does not decline the hook: the
//                        host really calls into the plugin for every call); no onResult.
//   {"mode": "rewrite"}  as "pass", and onResult wraps a successful result as {"wrapped": <result>}
//                        (the result JSON is parsed and re-serialized).

import { Plugin, forward, okRaw } from '@ovsb/plugin-sdk';

export default class Bench extends Plugin {
  constructor(config) {
    super();
    this.mode = config.parse({ mode: { type: 'string', oneOf: ['pass', 'rewrite'], default: 'pass' } }, '{"mode": "pass"}').mode;
  }

  hooks() {
    return { onCall: true, onResult: this.mode === 'rewrite' };
  }

  onCall(ctx, call) {
    return forward(call);
  }

  onResult(ctx, call, outcome) {
    if (!outcome.isOk) return outcome;
    return okRaw(`{"wrapped":${JSON.stringify(JSON.parse(outcome.resultText))}}`);
  }
}
