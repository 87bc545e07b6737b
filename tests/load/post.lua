-- wrk script: POST one JSON-RPC call (set BODY in the environment to change it).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY") or '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}'
