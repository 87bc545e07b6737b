// viem's webSocket transport (reconnects and resubscribes on its own), printing one JSON line
// per event, for host/tests/all/dapp.rs:
//   node viem-watch.mjs <ws_url> heads            watchBlocks: {"head": n} per block, {"error": name}
//   node viem-watch.mjs <ws_url> logs <address> <n>
//                                                 eth_subscribe logs: {"ready": true} once subscribed,
//                                                 then the logs' data as numbers, in arrival order,
//                                                 once n have come (or {"closed": …} if the socket closes)
import { createPublicClient, webSocket } from "viem";

const [url, mode, address, n] = process.argv.slice(2);
const print = (value) => console.log(JSON.stringify(value));

if (mode === "heads") {
  const client = createPublicClient({ transport: webSocket(url, { retryCount: 0 }) });
  client.watchBlocks({
    onBlock: (block) => print({ head: Number(block.number) }),
    onError: (error) => print({ error: error.name }),
  });
} else {
  // No reconnect: a burst must arrive whole on the socket it was subscribed on.
  const client = createPublicClient({ transport: webSocket(url, { retryCount: 0, reconnect: false }) });
  const seen = [];
  const { subscriptionId } = await client.transport.subscribe({
    params: ["logs", { address }],
    onData: (data) => {
      seen.push(Number(BigInt(data.result.data)));
      if (seen.length === Number(n)) {
        print(seen);
        process.exit(0);
      }
    },
    onError: (error) => {
      print({ closed: error.name, seen: seen.length });
      process.exit(1);
    },
  });
  print({ ready: subscriptionId.startsWith("0x") });
}
