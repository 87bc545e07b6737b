// A hostile plugin for the host's limit tests (built with plugin-sdk/js/build.mjs):
//   hostile_loop   loops forever in onCall (the call budget must stop it)
//   hostile_grow   pushes filled 1 MiB ArrayBuffers to a module-level array forever (the memory cap must stop it)
//   hostile_raise  throws new Error("boom") (the SDK answers -32603 "plugin failed in onCall: boom")
//   hostile_ok     answers "ok"
// Every other call is forwarded.

import { Plugin, forward, respondOk } from '@ovsb/plugin-sdk';

const hoard = [];

export default class Hostile extends Plugin {
  hooks() {
    return { onCall: true, onResult: false };
  }

  onCall(ctx, call) {
    switch (call.method) {
      case 'hostile_loop': {
        let n = 0;
        for (;;) n = (n + 1) | 0;
      }
      case 'hostile_grow':
        for (;;) {
          const chunk = new Uint8Array(new ArrayBuffer(1 << 20));
          // Every byte written, by doubling copies (native memmove; a per-byte fill runs in the
          // interpreter and would reach the time budget long before the memory cap).
          chunk[0] = 0xab;
          for (let n = 1; n < chunk.length; n *= 2) chunk.copyWithin(n, 0, n);
          hoard.push(chunk.buffer);
        }
      case 'hostile_raise':
        throw new Error('boom');
      case 'hostile_ok':
        return respondOk('ok');
      default:
        return forward(call);
    }
  }
}
