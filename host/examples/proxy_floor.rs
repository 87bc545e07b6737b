//! The floor of the gateway's stack, for `tests/load/gateway-load.sh`: the least a proxy built
//! from the crates ovsb's data plane is built from can cost per call, with none of ovsb's own
//! work (no keys, limits, ids, plugins, metrics).
//!
//! `proxy_floor hyper LISTEN UPSTREAM`: hyper's HTTP/1 server reads the body whole and sends it
//! with hyper-util's pooled client, then returns the answer's body (what any Rust proxy on hyper
//! does at the least).
//! `proxy_floor jsonrpsee LISTEN UPSTREAM`: a jsonrpsee server whose RPC middleware sends each
//! call's method and params with the same client and answers its result (the least a JSON-RPC
//! proxy on jsonrpsee does).
//!
//! Same allocator (mimalloc) and runtime choice (current-thread on one CPU) as `ovsb`.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Upstream = Client<HttpConnector, Full<Bytes>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, kind, listen, upstream] = &args[..] else {
        eprintln!("usage: proxy_floor hyper|jsonrpsee LISTEN_ADDR UPSTREAM_URL");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR is host:port");
    let upstream: http::Uri = upstream.parse().expect("UPSTREAM_URL is a URL");
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder.enable_all().build().expect("a runtime");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
    match kind.as_str() {
        "hyper" => runtime.block_on(hyper_proxy(listen, upstream, client)),
        "jsonrpsee" => runtime.block_on(jsonrpsee_proxy(listen, upstream, client)),
        other => panic!("unknown kind {other}"),
    }
}

async fn forward(client: &Upstream, upstream: &http::Uri, body: Bytes) -> Option<Bytes> {
    let request = http::Request::post(upstream.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .ok()?;
    let response = client.request(request).await.ok()?;
    Some(response.into_body().collect().await.ok()?.to_bytes())
}

async fn hyper_proxy(listen: SocketAddr, upstream: http::Uri, client: Upstream) {
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let _ = socket.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (client, upstream) = (client.clone(), upstream.clone());
                async move {
                    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let answer = forward(&client, &upstream, body).await.unwrap_or_default();
                    let mut response = http::Response::new(Full::new(answer));
                    response
                        .headers_mut()
                        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

async fn jsonrpsee_proxy(listen: SocketAddr, upstream: http::Uri, client: Upstream) {
    use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
    use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
    use jsonrpsee::server::{MethodResponse, ResponsePayload, RpcModule, Server};
    use serde_json::value::RawValue;

    #[derive(Clone)]
    struct Forward {
        client: Upstream,
        upstream: http::Uri,
    }
    impl RpcServiceT for Forward {
        type MethodResponse = MethodResponse;
        type NotificationResponse = MethodResponse;
        type BatchResponse = MethodResponse;
        fn call<'a>(&self, req: jsonrpsee::types::Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
            let this = self.clone();
            async move {
                let params = req.params.as_deref().map_or("[]", RawValue::get);
                let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{}","params":{params}}}"#, req.method);
                let answer = forward(&this.client, &this.upstream, body.into()).await.unwrap_or_default();
                #[derive(serde::Deserialize)]
                struct Answer<'a> {
                    #[serde(borrow)]
                    result: &'a RawValue,
                }
                let result = serde_json::from_slice::<Answer>(&answer)
                    .map(|a| a.result.to_owned())
                    .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"));
                MethodResponse::response(req.id, ResponsePayload::success(result), usize::MAX)
            }
        }
        fn batch<'a>(&self, _: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
            std::future::ready(MethodResponse::notification())
        }
        fn notification<'a>(&self, _: Notification<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
            std::future::ready(MethodResponse::notification())
        }
    }
    let layer = tower::layer::layer_fn(move |_inner| Forward { client: client.clone(), upstream: upstream.clone() });
    let server =
        Server::builder().set_rpc_middleware(RpcServiceBuilder::new().layer(layer)).build(listen).await.expect("bind");
    let handle = server.start(RpcModule::new(()));
    handle.stopped().await;
}
