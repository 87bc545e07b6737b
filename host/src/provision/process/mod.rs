//! The `process` driver: a dedicated node process per instance, from a command template.
//!
//! Owns: allocating each node a port and a data directory, starting it, probing it until it
//! answers, supervising it (restart with backoff unless its exit code is marked deliberate),
//! keeping its log bounded, stopping it (SIGTERM, then SIGKILL after a grace period) and
//! removing its directory on deprovision.
//!
//! What it knows of a node lives in the node's own directory (`<data_dir>/nodes/<h>/node.json`,
//! written before the process starts), and every node runs with `OVSB_NODE=<h>` in its
//! environment. After an ovsb restart, [`ProcessDriver::recover`] adopts the node processes it
//! finds by that marker (reading `/proc`), restarts the missing ones, stops duplicates and
//! nodes of instances that no longer exist: never two nodes for one instance, never a leak.
//! Nodes run in their own process group and outlive ovsb, so a restart of ovsb does not
//! restart them.
//!
//! A node's process is `supervisor`'s (start, adopt, restart, stop); its command's
//! placeholders are `templates`'s.

mod supervisor;
mod templates;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Driver, DriverError, DriverFuture, InstanceSpec, Progress};
use crate::config::ProcessDriverDecl;
use crate::plugins::Call;
use crate::upstream::{UpstreamPool, UpstreamSettings};
use supervisor::{Supervisor, find_marked, stop_pid};
pub use templates::placeholders;
pub(super) use templates::{fill, fill_arguments, parameter_values};

/// The environment variable that marks a node process as ovsb's.
pub const NODE_MARKER: &str = "OVSB_NODE";

/// What is kept about a node, in its directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct NodeRecord {
    pub(super) instance_id: String,
    pub(super) port: u16,
    /// The ports of the plan's `extra_ports`, by name.
    #[serde(default)]
    pub(super) extra_ports: BTreeMap<String, u16>,
    pub(super) argv: Vec<String>,
}

struct Node {
    record: NodeRecord,
    pool: Arc<UpstreamPool>,
    /// Cancelled to stop supervising (before a deliberate stop).
    stop: CancellationToken,
    pid: Arc<Mutex<Option<u32>>>,
}

/// The driver of one plan.
pub struct ProcessDriver {
    decl: ProcessDriverDecl,
    /// Names the command may use that come from the instance's parameters as they are
    /// (the validator driver's start options), besides the declared driver parameters.
    template_names: &'static [&'static str],
    plan_id: String,
    root: PathBuf,
    /// Where other replicas reach this replica's nodes (the `{node_host}` placeholder).
    replica: crate::config::ReplicaSettings,
    deadline: Duration,
    max_response_bytes: usize,
    nodes: Mutex<HashMap<String, Node>>,
    /// Serializes start, stop and port allocation.
    lifecycle: tokio::sync::Mutex<()>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl ProcessDriver {
    /// A driver whose nodes live under `root` (one directory per instance).
    pub fn new(
        decl: ProcessDriverDecl,
        plan_id: &str,
        root: PathBuf,
        deadline: Duration,
        max_response_bytes: usize,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let mut decl = decl;
        // The node runs in its own directory: a relative program path is taken from ovsb's
        // working directory now, not from the node's later.
        if let Some(program) = decl.command.first_mut()
            && program.contains('/')
            && Path::new(program.as_str()).is_relative()
            && let Ok(cwd) = std::env::current_dir()
        {
            *program = cwd.join(program.as_str()).display().to_string();
        }
        let _ = std::fs::create_dir_all(&root);
        let root = root.canonicalize().unwrap_or(root);
        ProcessDriver {
            decl,
            template_names: &[],
            plan_id: plan_id.to_string(),
            root,
            replica: Default::default(),
            deadline,
            max_response_bytes,
            nodes: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            tracker,
            shutdown,
        }
    }

    /// Sets where other replicas reach this replica's nodes.
    pub(super) fn with_replica(mut self, replica: crate::config::ReplicaSettings) -> Self {
        self.replica = replica;
        self
    }

    /// Where other replicas reach the node this replica runs for `instance_id`: its HTTP URL
    /// and, for plans whose nodes speak it, its WebSocket URL.
    pub(super) fn node_urls(&self, instance_id: &str) -> Option<(String, Option<String>)> {
        let port = self.nodes().get(instance_id)?.record.port;
        Some((self.replica.node_url("http", port), self.decl.ws.then(|| self.replica.node_url("ws", port))))
    }

    /// Whether this driver supervises a node for `instance_id` here.
    pub(super) fn runs(&self, instance_id: &str) -> bool {
        self.nodes().contains_key(instance_id)
    }

    /// The instances whose nodes this driver supervises here.
    pub(super) fn local_instances(&self) -> Vec<String> {
        self.nodes().keys().cloned().collect()
    }

    /// Stops an instance's node and removes its directory (a deprovision, or a node another
    /// replica now runs).
    pub(super) async fn remove_node(&self, instance_id: &str) -> Result<(), DriverError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.stop_node(instance_id).await;
        match std::fs::remove_dir_all(self.dir(instance_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::Failed(format!("cannot remove the node's directory: {e}"))),
        }
    }

    /// Lets the command use these names of the instance's parameters as placeholders.
    pub(super) fn with_template_names(mut self, names: &'static [&'static str]) -> Self {
        self.template_names = names;
        self
    }

    fn dir_name(&self, instance_id: &str) -> String {
        let digest = Sha256::digest(format!("{}\0{instance_id}", self.plan_id).as_bytes());
        hex::encode(&digest[..12])
    }

    /// The `OVSB_NODE` value of an instance's node: unique per data directory too, so that two
    /// ovsb on one machine never take each other's nodes.
    fn marker(&self, instance_id: &str) -> String {
        let digest = Sha256::digest(format!("{}\0{}", self.root.display(), self.dir_name(instance_id)).as_bytes());
        hex::encode(&digest[..12])
    }

    /// The directory of an instance's node (its record, log and `data/`).
    pub(super) fn dir(&self, instance_id: &str) -> PathBuf {
        self.root.join(self.dir_name(instance_id))
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Node>> {
        self.nodes.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The command line of an instance's node, placeholders filled in.
    fn argv(
        &self,
        spec: &InstanceSpec,
        port: u16,
        extra_ports: &BTreeMap<String, u16>,
    ) -> Result<Vec<String>, DriverError> {
        let dir = self.dir(&spec.id).join("data");
        let mut values = parameter_values(spec, self.template_names, &self.decl.parameters);
        values.insert("port".into(), port.to_string());
        for (name, port) in extra_ports {
            values.insert(name.clone(), port.to_string());
        }
        values.insert("data_dir".into(), dir.display().to_string());
        values.insert("instance_id".into(), spec.id.clone());
        values.insert("node_host".into(), self.replica.node_host.clone());
        fill_arguments(&self.decl.command, &values, |name| {
            self.decl.parameters.contains_key(name) || self.template_names.contains(&name)
        })
    }

    /// What is recorded of an instance's node, if it has one.
    pub(super) fn read_record(&self, instance_id: &str) -> Option<NodeRecord> {
        let text = std::fs::read_to_string(self.dir(instance_id).join("node.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_record(&self, record: &NodeRecord) -> Result<(), DriverError> {
        let dir = self.dir(&record.instance_id);
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| DriverError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        let tmp = dir.join("node.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(record).expect("a record serializes"))
            .and_then(|()| std::fs::rename(&tmp, dir.join("node.json")))
            .map_err(|e| DriverError::Failed(format!("cannot write the node record: {e}")))
    }

    /// A new node record for an instance: free ports of the plan's range that no node of this
    /// driver holds (one, plus one per `extra_ports`), and the command line.
    fn new_record(&self, spec: &InstanceSpec) -> Result<NodeRecord, DriverError> {
        let mut taken: HashSet<u16> = HashSet::new();
        let mut take_record = |record: &NodeRecord| {
            taken.insert(record.port);
            taken.extend(record.extra_ports.values().copied());
        };
        for node in self.nodes().values() {
            take_record(&node.record);
        }
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if let Some(record) = self.read_record_in(&entry.path()) {
                    take_record(&record);
                }
            }
        }
        let mut ports = Vec::with_capacity(1 + self.decl.extra_ports.len());
        for _ in 0..=self.decl.extra_ports.len() {
            let port = self.free_port(&taken)?;
            taken.insert(port);
            ports.push(port);
        }
        let extra_ports: BTreeMap<String, u16> =
            self.decl.extra_ports.iter().cloned().zip(ports[1..].iter().copied()).collect();
        let argv = self.argv(spec, ports[0], &extra_ports)?;
        Ok(NodeRecord { instance_id: spec.id.clone(), port: ports[0], extra_ports, argv })
    }

    /// A port of the plan's range that is not in `taken` and that nothing listens on.
    fn free_port(&self, taken: &HashSet<u16>) -> Result<u16, DriverError> {
        let [low, high] = self.decl.ports;
        let span = u32::from(high - low) + 1;
        let mut seed = [0u8; 4];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        let start = u32::from_le_bytes(seed) % span;
        for offset in 0..span {
            let port = low + ((start + offset) % span) as u16;
            if !taken.contains(&port) && std::net::TcpListener::bind((self.bind_address(), port)).is_ok() {
                return Ok(port);
            }
        }
        Err(DriverError::Failed(format!("no free port left in {low}-{high}")))
    }

    /// Where this replica's nodes listen: `replica.node_host` (an IP address, checked).
    fn bind_address(&self) -> std::net::IpAddr {
        self.replica.node_host.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// The pool this replica reaches its own node through: at `replica.node_host`, where the
    /// node listens (a plan whose command binds loopback does so when `node_host` is loopback).
    fn pool_for(&self, port: u16) -> Arc<UpstreamPool> {
        Arc::new(UpstreamPool::new(UpstreamSettings {
            http: vec![self.replica.node_url("http", port).parse().expect("a node URL parses")],
            ws: if self.decl.ws { vec![self.replica.node_url("ws", port)] } else { Vec::new() },
            deadline: self.deadline,
            max_response_bytes: self.max_response_bytes,
            max_sockets_per_node: self.decl.max_sockets_per_node as usize,
        }))
    }

    /// Makes sure the instance's node runs (adopting one that already does) under supervision.
    pub(super) async fn ensure_running(
        &self,
        spec: &InstanceSpec,
        progress: Option<&Progress>,
    ) -> Result<Arc<UpstreamPool>, DriverError> {
        let _lifecycle = self.lifecycle.lock().await;
        if let Some(node) = self.nodes().get(&spec.id) {
            return Ok(node.pool.clone());
        }
        let record = match self.read_record(&spec.id) {
            Some(record) => record,
            None => {
                let record = self.new_record(spec)?;
                self.write_record(&record)?;
                record
            }
        };
        let marker = self.marker(&spec.id);
        let mut running = find_marked(&marker);
        running.sort_unstable();
        // Never two nodes for one instance: keep the oldest (lowest pid), stop the others.
        for extra in running.iter().skip(1) {
            tracing::warn!(instance = %spec.id, pid = extra, "stopping a duplicate node process");
            stop_pid(*extra, Duration::from_millis(self.decl.stop_grace_ms)).await;
        }
        let adopted = running.first().copied();
        if let Some(progress) = progress {
            progress.report(&format!("starting the node on port {}", record.port)).await;
        }
        let pool = self.pool_for(record.port);
        let node = Node {
            record: record.clone(),
            pool: pool.clone(),
            stop: self.shutdown.child_token(),
            pid: Arc::new(Mutex::new(adopted)),
        };
        let supervisor = Supervisor {
            decl: self.decl.clone(),
            record,
            dir: self.dir(&spec.id),
            marker,
            stop: node.stop.clone(),
            pid: node.pid.clone(),
            shutdown: self.shutdown.clone(),
        };
        let first_start = supervisor
            .start_or_adopt(adopted)
            .map_err(|e| DriverError::Failed(format!("cannot start the node: {e}")))?;
        self.tracker.spawn(supervisor.run(first_start));
        self.nodes().insert(spec.id.clone(), node);
        Ok(pool)
    }

    async fn wait_ready(&self, pool: &UpstreamPool, port: u16, progress: &Progress) -> Result<(), DriverError> {
        let probe = Call { method: "eth_chainId".into(), params: None };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match pool.probe(0, &probe).await {
                Ok(_) => return Ok(()),
                Err(err) => {
                    if attempt % 20 == 1 {
                        progress.report(&waiting_for_node(port, attempt, &err.message)).await;
                    }
                }
            }
            // Poll fast while a node typically starts (anvil: ~0.1 s), then back off.
            let pause = if attempt < 50 { 10 } else { 200 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// Stops an instance's node (and anything else carrying its marker); keeps its directory.
    async fn stop_node(&self, instance_id: &str) {
        let node = self.nodes().remove(instance_id);
        let grace = Duration::from_millis(self.decl.stop_grace_ms);
        if let Some(node) = node {
            node.stop.cancel();
            let pid = *node.pid.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pid) = pid {
                stop_pid(pid, grace).await;
            }
        }
        // Whatever else carries the marker (a node started before a crash) goes too.
        for pid in find_marked(&self.marker(instance_id)) {
            stop_pid(pid, grace).await;
        }
    }

    /// Rewrites the node's command line for `to` and, when it changed, stops the node so that the
    /// next [`ProcessDriver::ensure_running`] starts it again (same ports, same data); a node
    /// whose command line did not change (only the chain changed) keeps running.
    async fn restart_if_changed(&self, to: &InstanceSpec, progress: &Progress) -> Result<(), DriverError> {
        let Some(current) = self.read_record(&to.id) else { return Ok(()) };
        let wanted = self.argv(to, current.port, &current.extra_ports)?;
        if current.argv == wanted {
            return Ok(());
        }
        progress.report("restarting the node with its new parameters").await;
        self.stop_node(&to.id).await;
        let _lifecycle = self.lifecycle.lock().await;
        self.write_record(&NodeRecord { argv: wanted, ..current })
    }

    /// After a restart: adopt or restart the nodes of `live` instances, and stop and remove
    /// the nodes of every other instance this driver has a directory for.
    pub async fn recover_nodes(&self, live: &[InstanceSpec], busy: &[String]) {
        let live_dirs: HashSet<String> = live
            .iter()
            .map(|s| s.id.as_str())
            .chain(busy.iter().map(String::as_str))
            .map(|id| self.dir_name(id))
            .collect();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if live_dirs.contains(&name) {
                    continue;
                }
                let Some(record) = self.read_record_in(&entry.path()) else { continue };
                if self.dir_name(&record.instance_id) != name {
                    continue;
                }
                tracing::warn!(instance = %record.instance_id, "removing the node of an instance that no longer exists");
                self.stop_node(&record.instance_id).await;
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        for spec in live {
            if let Err(err) = self.ensure_running(spec, None).await {
                tracing::error!(instance = %spec.id, "cannot recover the node: {err}");
            }
        }
    }

    fn read_record_in(&self, dir: &Path) -> Option<NodeRecord> {
        serde_json::from_str(&std::fs::read_to_string(dir.join("node.json")).ok()?).ok()
    }
}

impl Driver for ProcessDriver {
    fn provision<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        async move {
            let pool = self.ensure_running(spec, Some(progress)).await?;
            let port = self.nodes().get(&spec.id).map_or(0, |n| n.record.port);
            self.wait_ready(&pool, port, progress).await
        }
        .boxed()
    }

    fn update<'a>(&'a self, _from: &'a InstanceSpec, to: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        async move {
            self.restart_if_changed(to, progress).await?;
            let pool = self.ensure_running(to, Some(progress)).await?;
            let port = self.nodes().get(&to.id).map_or(0, |n| n.record.port);
            self.wait_ready(&pool, port, progress).await
        }
        .boxed()
    }

    fn deprovision<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        async move {
            progress.report("stopping the node").await;
            self.remove_node(&spec.id).await
        }
        .boxed()
    }

    fn upstream(&self, instance_id: &str) -> Option<Arc<UpstreamPool>> {
        self.nodes().get(instance_id).map(|n| n.pool.clone())
    }

    fn recover<'a>(&'a self, live: &'a [InstanceSpec], busy: &'a [String]) -> BoxFuture<'a, ()> {
        self.recover_nodes(live, busy).boxed()
    }
}

/// What `last_operation` says while a started node does not answer yet: a node that is not
/// listening yet is starting, as every node does for a moment, not an error to show.
fn waiting_for_node(port: u16, attempt: u32, error: &str) -> String {
    let refused = error.contains("Connection refused") || error.contains("os error 111");
    if refused {
        format!("waiting for the node on port {port} to start (attempt {attempt}: not listening yet)")
    } else {
        format!("waiting for the node on port {port} to answer (attempt {attempt}: {error})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_not_listening_yet_is_starting_not_failing() {
        let refused = "error trying to connect: tcp connect error: Connection refused (os error 111)";
        assert_eq!(
            waiting_for_node(8545, 1, refused),
            "waiting for the node on port 8545 to start (attempt 1: not listening yet)"
        );
        assert_eq!(
            waiting_for_node(8545, 21, "the node answered 503"),
            "waiting for the node on port 8545 to answer (attempt 21: the node answered 503)"
        );
    }

    pub(super) fn decl(command: &[&str], deliberate: &[i32]) -> ProcessDriverDecl {
        ProcessDriverDecl {
            command: command.iter().map(|s| s.to_string()).collect(),
            ports: [40000, 40999],
            extra_ports: Vec::new(),
            ws: false,
            stop_grace_ms: 500,
            restart_backoff_ms: [10, 20],
            deliberate_exit_codes: deliberate.to_vec(),
            log_max_bytes: 4096,
            max_sockets_per_node: 64,
            env: Default::default(),
            parameters: toml::Table::new(),
        }
    }

    #[test]
    fn a_replica_reaches_its_own_nodes_where_they_listen_and_tells_others_the_same_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut decl = decl(&["anvil", "--host", "{node_host}", "--port", "{port}"], &[]);
        decl.ws = true;
        let replica = crate::config::ReplicaSettings { node_host: "10.9.8.7".into() };
        let driver = ProcessDriver::new(
            decl,
            "plan",
            dir.path().to_path_buf(),
            Duration::from_secs(1),
            1 << 20,
            TaskTracker::new(),
            CancellationToken::new(),
        )
        .with_replica(replica);
        let spec =
            InstanceSpec { id: "i".into(), plan_id: "plan".into(), parameters: serde_json::json!({}), secrets: None };
        assert_eq!(
            driver.argv(&spec, 40001, &BTreeMap::new()).unwrap(),
            ["anvil", "--host", "10.9.8.7", "--port", "40001"]
        );
        let pool = driver.pool_for(40001);
        assert_eq!(pool.url(0), "http://10.9.8.7:40001/", "its own gateway reaches the node where it listens");
        assert_eq!(driver.bind_address(), "10.9.8.7".parse::<std::net::IpAddr>().unwrap());
    }
}
