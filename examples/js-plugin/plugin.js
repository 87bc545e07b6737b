// js_plugin: an example ovsb plugin in JavaScript (made with `ovsb plugin new js_plugin --lang js`,
// then given real behaviour):
//
// * a new method, `head_info`: asks the node for `eth_getBlockByNumber ["latest", false]` and
//   answers `{"number", "hash", "timestamp", "age_ms"}` (number and timestamp in decimal,
//   `age_ms` = now - timestamp). The block part is cached in the instance's key-value store for
//   `cache_ms` (shared by every copy of the plugin), so calls within that time make no upstream
//   call; `age_ms` is always computed afresh. Reaching the node is logged at info.
// * a response rewrite: the result of `web3_clientVersion` gets `suffix` appended.
//
// Configuration: `{"cache_ms": 1000, "suffix": " (via ovsb)"}`, both optional; unknown fields
// are refused. Only `head_info` and `web3_clientVersion` are selected: ovsb passes every other
// call by without calling into the plugin.

import {
  Methods, Plugin, RpcError, KvError, forward, kv, log, nowMs, ok, respondOk, upstream,
} from '@ovsb/plugin-sdk';

const CACHE_KEY = 'head_info:block';

/** A hex quantity ("0x1b4") as a number; an RpcError naming `field` if it is not one. */
function quantity(block, field) {
  const value = block[field];
  if (typeof value !== 'string' || !/^0x[0-9a-fA-F]+$/.test(value)) {
    throw new RpcError(-32000, `the node's latest block has no valid \`${field}\``, { [field]: value ?? null });
  }
  return Number(BigInt(value));
}

export default class JsPlugin extends Plugin {
  /** @param {import('@ovsb/plugin-sdk').Config} config */
  constructor(config) {
    super();
    const { cache_ms: cacheMs, suffix } = config.parse(
      {
        cache_ms: { type: 'integer', min: 0, max: 3_600_000, default: 1000 },
        suffix: { type: 'string', max: 256, default: ' (via ovsb)' },
      },
      '{"cache_ms": 1000, "suffix": " (via ovsb)"}',
    );
    this.cacheMs = cacheMs;
    this.suffix = suffix;
  }

  methods() {
    return Methods.matching(['head_info', 'web3_clientVersion']);
  }

  onCall(ctx, call) {
    if (call.method !== 'head_info') return forward(call);
    const block = this.latestBlock();
    return respondOk({ ...block, age_ms: nowMs() - block.timestamp * 1000 });
  }

  /** `{number, hash, timestamp}` of the latest block, from the cache or the node. */
  latestBlock() {
    const cached = this.cacheMs > 0 ? kv.getJson(CACHE_KEY) : undefined;
    if (cached !== undefined) return cached;
    log.info('head_info: asking the node for the latest block');
    // upstream() returns the result or throws the node's RpcError (or the host's, e.g. past the
    // cap on upstream calls), which, uncaught, answers the client's call as is.
    const latest = upstream('eth_getBlockByNumber', ['latest', false]);
    if (latest === null || typeof latest !== 'object') {
      throw new RpcError(-32000, 'the node returned no latest block');
    }
    if (typeof latest.hash !== 'string') {
      throw new RpcError(-32000, "the node's latest block has no valid `hash`", { hash: latest.hash ?? null });
    }
    const block = { number: quantity(latest, 'number'), hash: latest.hash, timestamp: quantity(latest, 'timestamp') };
    if (this.cacheMs > 0) {
      try {
        kv.setJson(CACHE_KEY, block, { ttlMs: this.cacheMs });
      } catch (err) {
        if (!(err instanceof KvError)) throw err;
        log.warn(`head_info: cannot cache the block: ${err.message}`);
      }
    }
    return block;
  }

  // Only forwarded calls come back here: web3_clientVersion (head_info is answered in onCall).
  onResult(ctx, call, outcome) {
    if (call.method === 'web3_clientVersion' && outcome.isOk && typeof outcome.result === 'string') {
      return ok(outcome.result + this.suffix);
    }
    return outcome;
  }
}
