//! A whole ovsb (broker + gateway + store) in the test process, over SQLite in a temporary
//! directory or over a fresh PostgreSQL database, with a small OSB client.

use std::path::Path;
use std::time::Duration;

use ovsb::config::Config;
use ovsb::server::Server;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "svc-ethereum-rpc";
pub const SERVICE2: &str = "svc-second";
pub const PLAN_SHARED: &str = "plan-shared";
pub const PLAN_OTHER: &str = "plan-other";
pub const PLAN_PENDING: &str = "plan-pending";
pub const PLAN_FIXED: &str = "plan-fixed";
pub const PLAN_CAPPED: &str = "plan-capped";
pub const PLAN_SOLO: &str = "plan-solo";
pub const USER: &str = "platform";
pub const PASSWORD: &str = "s3cret-test-password";
pub const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests create their databases in.
pub fn postgres_admin_url() -> String {
    std::env::var("OVSB_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database for one test: a SQLite file in `dir`, or a new PostgreSQL database dropped at the end.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(db: Db, dir: &Path) -> TestDb {
        match db {
            Db::Sqlite => TestDb { url: format!("sqlite://{}", dir.join("ovsb.db").display()), pg_name: None },
            Db::Postgres => {
                use sqlx::Connection as _;
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|err| {
                    panic!("PostgreSQL at {admin} is not reachable ({err}); tests/run-all.sh starts it")
                });
                let name = format!("ovsb_test_{}", ovsb::store::random_id());
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
                conn.close().await.ok();
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_string();
                TestDb { url: format!("{base}/{name}"), pg_name: Some(name) }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            let _ = std::process::Command::new("psql")
                .arg(postgres_admin_url())
                .args(["-q", "-c", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The test catalog, over the node at `node` (HTTP URL); plan `pending` points at
/// `pending_port`, where nothing listens until a test starts a node there.
pub fn test_config_toml(node: &str, pending_port: u16) -> String {
    test_config_toml_with(node, pending_port, "")
}

/// [`test_config_toml`] with `extra_plans` (TOML `[[services.plans]]` tables) added to the first
/// service.
pub fn test_config_toml_with(node: &str, pending_port: u16, extra_plans: &str) -> String {
    let ws = node.replace("http://", "ws://");
    format!(
        r#"
[broker]
listen = "127.0.0.1:0"
username = "{USER}"
password = "{PASSWORD}"
secret_key = "{SECRET_KEY}"

[gateway]
listen = "127.0.0.1:0"
upstream_deadline_ms = 2000

[admin]
listen = "127.0.0.1:0"

[operations]
lease_seconds = 3
retry_after_seconds = 1
sync_interval_ms = 200

[[plugins]]
name = "test"
path = "{test}"

[[plugins]]
name = "pass"
path = "{pass}"

[[services]]
id = "{SERVICE}"
name = "ethereum-rpc"
description = "Ethereum JSON-RPC"
plan_updateable = true

[[services.plans]]
id = "{PLAN_SHARED}"
name = "shared"
description = "the test node"
maintenance_info = {{ version = "1.2.0" }}
driver = {{ kind = "upstream", http = ["{node}"], ws = ["{ws}"] }}

[[services.plans]]
id = "{PLAN_OTHER}"
name = "other"
description = "the test node, another plan"
maintenance_info = {{ version = "2.0.0" }}
plugins = [{{ name = "test", config = {{ mode = "respond", tag = "plan-default" }} }}]
driver = {{ kind = "upstream", http = ["{node}"] }}

[[services.plans]]
id = "{PLAN_PENDING}"
name = "pending"
description = "a node that is not there yet"
maximum_polling_duration = 120
driver = {{ kind = "upstream", http = ["http://127.0.0.1:{pending_port}"] }}

[[services.plans]]
id = "{PLAN_FIXED}"
name = "fixed"
description = "cannot change plan"
plan_updateable = false
driver = {{ kind = "upstream", http = ["{node}"] }}

[[services.plans]]
id = "{PLAN_CAPPED}"
name = "capped"
description = "one instance at most"
max_instances = 1
driver = {{ kind = "upstream", http = ["{node}"] }}

{extra_plans}

[[services]]
id = "{SERVICE2}"
name = "second"
description = "another service"

[[services.plans]]
id = "{PLAN_SOLO}"
name = "solo"
description = "the only plan"
driver = {{ kind = "upstream", http = ["{node}"] }}
"#,
        test = ovsb_test_artifacts::TEST_PLUGIN,
        pass = ovsb_test_artifacts::PASS_PLUGIN,
    )
}

/// A response: status, JSON body (Null if none), headers.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// Asserts an OSB error body (a non-empty `description`, and `error` when given).
    #[track_caller]
    pub fn assert_error(&self, status: u16, error: Option<&str>) {
        assert_eq!(self.status, status, "{self:?}");
        let description = self.body["description"].as_str().unwrap_or("");
        assert!(!description.is_empty(), "an OSB error body has a description: {self:?}");
        if let Some(error) = error {
            assert_eq!(self.body["error"], error, "{self:?}");
        }
    }
}

/// An OSB client with the platform's credentials.
#[derive(Clone)]
pub struct OsbClient {
    pub base: String,
    client: reqwest::Client,
}

impl OsbClient {
    pub fn new(base: String) -> Self {
        OsbClient { base, client: reqwest::Client::new() }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(USER, Some(PASSWORD))
            .header("X-Broker-API-Version", "2.17")
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Resp {
        let response = request.send().await.expect("HTTP request to the broker");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        Resp { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), headers }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    pub async fn provision(&self, id: &str, plan: &str, parameters: Option<Value>) -> Resp {
        let mut body = provision_body(plan);
        if let Some(parameters) = parameters {
            body["parameters"] = parameters;
        }
        self.call(Method::PUT, &format!("/v2/service_instances/{id}?accepts_incomplete=true"), Some(body)).await
    }

    pub async fn last_operation(&self, id: &str) -> Resp {
        self.call(Method::GET, &format!("/v2/service_instances/{id}/last_operation"), None).await
    }

    /// Polls `last_operation` until it is no longer `in progress`; returns the final body.
    pub async fn wait(&self, id: &str) -> Value {
        for _ in 0..600 {
            let resp = self.last_operation(id).await;
            assert_eq!(resp.status, 200, "{resp:?}");
            if resp.body["state"] != "in progress" {
                return resp.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("operation of {id} did not finish");
    }

    /// Polls `last_operation` until the operation ends, for operations that take seconds
    /// (validator clients start in about six); the final body.
    pub async fn finished(&self, id: &str) -> Value {
        let started = std::time::Instant::now();
        loop {
            let resp = self.last_operation(id).await;
            assert_eq!(resp.status, 200, "{resp:?}");
            if resp.body["state"] != "in progress" {
                return resp.body;
            }
            assert!(started.elapsed() < Duration::from_secs(150), "operation of {id} did not finish: {}", resp.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Provisions and waits for success.
    pub async fn ready_instance(&self, id: &str, plan: &str, parameters: Option<Value>) {
        let resp = self.provision(id, plan, parameters).await;
        assert_eq!(resp.status, 202, "{resp:?}");
        let done = self.wait(id).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }

    pub async fn bind(&self, instance: &str, binding: &str, plan: &str) -> Resp {
        self.call(
            Method::PUT,
            &format!("/v2/service_instances/{instance}/service_bindings/{binding}"),
            Some(json!({"service_id": SERVICE, "plan_id": plan})),
        )
        .await
    }

    pub async fn unbind(&self, instance: &str, binding: &str, plan: &str) -> Resp {
        self.call(
            Method::DELETE,
            &format!("/v2/service_instances/{instance}/service_bindings/{binding}?service_id={SERVICE}&plan_id={plan}"),
            None,
        )
        .await
    }

    pub async fn deprovision(&self, id: &str, plan: &str) -> Resp {
        self.call(
            Method::DELETE,
            &format!("/v2/service_instances/{id}?service_id={SERVICE}&plan_id={plan}&accepts_incomplete=true"),
            None,
        )
        .await
    }
}

pub fn provision_body(plan: &str) -> Value {
    json!({
        "service_id": SERVICE,
        "plan_id": plan,
        "organization_guid": "org-1",
        "space_guid": "space-1",
        "context": {"platform": "cloudfoundry", "organization_guid": "org-1", "space_guid": "space-1"},
    })
}

/// ovsb in this process.
pub struct TestBroker {
    pub osb: OsbClient,
    /// Where plan `pending` expects its node (nothing listens there until a test starts one).
    pub pending_port: u16,
    pub gateway: String,
    pub server: Option<Server>,
    pub db: Option<TestDb>,
    pub dir: Option<tempfile::TempDir>,
    shutdown: CancellationToken,
}

impl TestBroker {
    /// Starts ovsb over `db`, with the test catalog over `node`; `tweak` edits the config.
    pub async fn start(db: Db, node: &str, tweak: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(db, dir.path()).await;
        TestBroker::start_in(dir, db, node, crate::support::free_port(), tweak).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        db: TestDb,
        node: &str,
        pending_port: u16,
        tweak: impl FnOnce(&mut Config),
    ) -> TestBroker {
        TestBroker::start_with_plans(dir, db, node, pending_port, "", tweak).await
    }

    /// [`TestBroker::start_in`] with `extra_plans` in the test service (see [`test_config_toml_with`]).
    pub async fn start_with_plans(
        dir: tempfile::TempDir,
        db: TestDb,
        node: &str,
        pending_port: u16,
        extra_plans: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> TestBroker {
        let mut config = Config::from_toml(&test_config_toml_with(node, pending_port, extra_plans), "test").unwrap();
        config.data_dir = dir.path().join("data");
        config.database_url = db.url.clone();
        tweak(&mut config);
        let shutdown = CancellationToken::new();
        let server = Server::start(config, shutdown.clone()).await.expect("ovsb starts");
        TestBroker {
            osb: OsbClient::new(format!("http://{}", server.broker_addr)),
            pending_port,
            gateway: format!("http://{}", server.gateway_addr),
            server: Some(server),
            db: Some(db),
            dir: Some(dir),
            shutdown,
        }
    }

    /// Two replicas in this process on one fresh PostgreSQL database (B's own unused SQLite
    /// is replaced by A's database), each configured by `tweak`.
    pub async fn pair_on_postgres(node: &str, tweak: impl Fn(&mut Config)) -> (TestBroker, TestBroker) {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(Db::Postgres, dir.path()).await;
        let url = db.url.clone();
        let a = TestBroker::start_in(dir, db, node, crate::support::free_port(), &tweak).await;
        let dir_b = tempfile::tempdir().unwrap();
        let db_b = TestDb::new(Db::Sqlite, dir_b.path()).await;
        let b = TestBroker::start_in(dir_b, db_b, node, crate::support::free_port(), |c| {
            tweak(c);
            c.database_url = url;
        })
        .await;
        (a, b)
    }

    pub fn store(&self) -> &ovsb::store::Store {
        &self.server.as_ref().unwrap().store
    }

    /// Row counts and change generation: equal before and after a refused request.
    pub async fn fingerprint(&self) -> ((i64, i64, i64, i64), i64) {
        (self.store().counts().await.unwrap(), self.store().generation().await.unwrap())
    }

    pub async fn stop(mut self) -> (tempfile::TempDir, TestDb) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.wait(Duration::from_secs(10)).await;
        }
        (self.dir.take().unwrap(), self.db.take().unwrap())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(dir) = &self.dir {
            crate::support::kill_nodes_under(dir.path());
        }
    }
}
