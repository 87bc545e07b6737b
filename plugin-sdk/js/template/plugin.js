// {{name}}: an ovsb plugin in JavaScript.
//
// It answers a new method, `hello_world`, with "<greeting> from <instance id>", and passes every
// other call through untouched: it selects only `hello_world` (`methods()`), so ovsb does not
// even call into it for the others. Configuration (optional): `{"greeting": "text"}` (default "hello").
//
// Module top-level code runs at build time: use the host (log, kv, upstream, nowMs) only in hooks.

import { Methods, Plugin, respondOk } from '@ovsb/plugin-sdk';

export default class HelloWorld extends Plugin {
  /** @param {import('@ovsb/plugin-sdk').Config} config */
  constructor(config) {
    super();
    // Unknown fields and wrong types are refused with a message the operator sees as a 400.
    const { greeting } = config.parse({ greeting: { type: 'string', default: 'hello', min: 1, max: 200 } });
    this.greeting = greeting;
  }

  methods() {
    return Methods.matching(['hello_world']);
  }

  // Only `hello_world` arrives here (see methods()).
  onCall(ctx, call) {
    return respondOk(`${this.greeting} from ${ctx.instanceId}`);
  }

  // No onResult: the SDK's default passes outcomes through and tells ovsb to stop calling it.
  hooks() {
    return { onCall: true, onResult: false };
  }
}
