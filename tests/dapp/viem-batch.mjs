// viem's http transport with `batch: true`: N calls made at once go out as JSON-RPC batches of up
// to viem's default batchSize (1000). Prints one JSON line: the balances, in call order.
// Usage: node viem-batch.mjs <url> <n>
import { createPublicClient, http } from "viem";

const [url, n] = [process.argv[2], Number(process.argv[3])];
const client = createPublicClient({ transport: http(url, { batch: true, retryCount: 0 }) });
const address = (i) => `0x${(i + 1).toString(16).padStart(40, "0")}`;
const anvilAccount0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
const calls = Array.from({ length: n }, (_, i) =>
  client.getBalance({ address: i === 0 ? anvilAccount0 : address(i) }).then((b) => b.toString()),
);
const results = await Promise.allSettled(calls);
console.log(JSON.stringify(results.map((r) => (r.status === "fulfilled" ? r.value : `error: ${r.reason.shortMessage ?? r.reason}`))));
