//! Supervision of one node process: starting or adopting it, restarting it with back-off
//! unless its exit code is marked deliberate, keeping its log bounded, and stopping processes
//! (SIGTERM, then SIGKILL after a grace period); finding node processes by their marker.
//!
//! Owns: the life of a node's process. Must not: choose ports, write node records, or decide
//! which nodes should run (the `process` driver does).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{NODE_MARKER, NodeRecord};
use crate::config::ProcessDriverDecl;

/// Process ids whose environment carries `OVSB_NODE=<marker>`.
pub(super) fn find_marked(marker: &str) -> Vec<u32> {
    let needle = format!("{NODE_MARKER}={marker}");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) && is_alive(pid) {
            found.push(pid);
        }
    }
    found
}

fn is_alive(pid: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else { return false };
    if rustix::process::test_kill_process(pid).is_err() {
        return false;
    }
    // A zombie has exited; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .map(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// SIGTERM, then SIGKILL once `grace` has passed.
pub(super) async fn stop_pid(pid: u32, grace: Duration) {
    signal(pid, rustix::process::Signal::TERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !is_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, rustix::process::Signal::KILL);
    for _ in 0..100 {
        if !is_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps one node alive.
pub(super) struct Supervisor {
    pub(super) decl: ProcessDriverDecl,
    pub(super) record: NodeRecord,
    pub(super) dir: PathBuf,
    pub(super) marker: String,
    pub(super) stop: CancellationToken,
    pub(super) pid: Arc<Mutex<Option<u32>>>,
    /// ovsb's shutdown (the parent of `stop`): a node is left running then, for the next start
    /// to adopt.
    pub(super) shutdown: CancellationToken,
}

pub(super) enum Running {
    Child(tokio::process::Child),
    Adopted(u32),
}

impl Supervisor {
    fn set_pid(&self, pid: Option<u32>) {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner()) = pid;
    }

    pub(super) fn start_or_adopt(&self, adopted: Option<u32>) -> std::io::Result<Running> {
        match adopted {
            Some(pid) => {
                tracing::info!(instance = %self.record.instance_id, pid, port = self.record.port, "adopted a running node");
                Ok(Running::Adopted(pid))
            }
            None => self.spawn(),
        }
    }

    fn spawn(&self) -> std::io::Result<Running> {
        let log_path = self.dir.join("node.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let (program, args) = self.record.argv.split_first().ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            // A clean environment: the plan's declared `env` only (and PATH), never ovsb's
            // secrets (OVSB_SECRET_KEY, the broker password, identity keys, the database URL).
            .env_clear()
            .envs(child_env(&self.decl.env))
            .env(NODE_MARKER, &self.marker)
            // The node's directory lies under ovsb's data directory, often in a git checkout: a
            // node that asks git about itself (Lodestar's `node/version` does) must not find and
            // publish ovsb's own commit.
            // (git never walks up into a ceiling directory: the parent of the node's own.)
            .env("GIT_CEILING_DIRECTORIES", self.dir.parent().unwrap_or(&self.dir))
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C or SIGTERM meant for ovsb does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        let child = command.spawn()?;
        let pid = child.id();
        self.set_pid(pid);
        tracing::info!(instance = %self.record.instance_id, pid, port = self.record.port, "node started");
        Ok(Running::Child(child))
    }

    pub(super) async fn run(self, first: Running) {
        let mut running = first;
        let mut backoff = Duration::from_millis(self.decl.restart_backoff_ms[0]);
        let max_backoff = Duration::from_millis(self.decl.restart_backoff_ms[1]);
        loop {
            let started = tokio::time::Instant::now();
            let exit = tokio::select! {
                _ = self.stop.cancelled() => {
                    if self.shutdown.is_cancelled() {
                        let pid = *self.pid.lock().unwrap_or_else(|p| p.into_inner());
                        tracing::info!(
                            instance = %self.record.instance_id,
                            pid,
                            port = self.record.port,
                            "shutting down: the node is left running for the next start to adopt"
                        );
                    }
                    // Our own child must be reaped; the driver sends the signals.
                    if let Running::Child(mut child) = running {
                        tokio::spawn(async move { let _ = child.wait().await; });
                    }
                    return;
                }
                exit = self.wait_exit(&mut running) => exit,
            };
            self.set_pid(None);
            if self.stop.is_cancelled() {
                return;
            }
            if let Some(code) = exit
                && self.decl.deliberate_exit_codes.contains(&code)
            {
                tracing::info!(instance = %self.record.instance_id, code, "node exited deliberately; not restarting");
                return;
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(self.decl.restart_backoff_ms[0]);
            }
            tracing::warn!(instance = %self.record.instance_id, ?exit, ?backoff, "node exited; restarting");
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max_backoff);
            match self.spawn() {
                Ok(next) => running = next,
                Err(err) => {
                    tracing::error!(instance = %self.record.instance_id, "cannot restart the node: {err}");
                    running = Running::Adopted(0);
                }
            }
        }
    }

    /// Waits for the node to exit, keeping its log within bounds meanwhile; the exit code if known.
    async fn wait_exit(&self, running: &mut Running) -> Option<i32> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            match running {
                Running::Child(child) => {
                    tokio::select! {
                        status = child.wait() => return status.ok().and_then(|s| s.code()),
                        _ = tick.tick() => self.bound_log(),
                    }
                }
                Running::Adopted(pid) => {
                    tick.tick().await;
                    self.bound_log();
                    if *pid == 0 || !is_alive(*pid) {
                        return None;
                    }
                }
            }
        }
    }

    /// Keeps `node.log` under `log_max_bytes`: the older half moves to `node.log.1`.
    fn bound_log(&self) {
        let path = self.dir.join("node.log");
        let Ok(meta) = std::fs::metadata(&path) else { return };
        if meta.len() <= self.decl.log_max_bytes {
            return;
        }
        if let Ok(content) = std::fs::read(&path) {
            let _ = std::fs::write(self.dir.join("node.log.1"), &content);
            // The node appends (O_APPEND): after truncation its writes start at the new end.
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
                let _ = file.set_len(0);
            }
        }
    }
}

/// A node's whole environment: the plan's `env`, and ovsb's `PATH` unless the plan sets one.
fn child_env(declared: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = declared.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if !declared.contains_key("PATH")
        && let Some(path) = std::env::var_os("PATH")
    {
        env.push(("PATH".into(), path.to_string_lossy().into_owned()));
    }
    env
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::super::tests::decl;
    use super::*;

    fn supervisor(dir: &Path, decl: ProcessDriverDecl) -> Supervisor {
        Supervisor {
            record: NodeRecord {
                instance_id: "i".into(),
                port: 40000,
                extra_ports: BTreeMap::new(),
                argv: decl.command.clone(),
            },
            decl,
            dir: dir.to_path_buf(),
            marker: format!("unit-test-{}", crate::store::random_id()),
            stop: CancellationToken::new(),
            pid: Arc::new(Mutex::new(None)),
            shutdown: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_node_that_exits_is_restarted_unless_its_exit_code_is_deliberate() {
        let dir = tempfile::tempdir().unwrap();
        // Exits 1 each time: restarted again and again (the count file grows).
        let crashing = supervisor(dir.path(), decl(&["sh", "-c", "echo run >> count; exit 1"], &[3]));
        let stop = crashing.stop.clone();
        let first = crashing.spawn().unwrap();
        let task = tokio::spawn(crashing.run(first));
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.cancel();
        task.await.unwrap();
        let runs = std::fs::read_to_string(dir.path().join("count")).unwrap().lines().count();
        assert!(runs >= 3, "restarted with backoff: {runs} runs");
        // Exits 3, marked deliberate: run once, not restarted, the supervisor ends by itself.
        let dir = tempfile::tempdir().unwrap();
        let deliberate = supervisor(dir.path(), decl(&["sh", "-c", "echo run >> count; exit 3"], &[3]));
        let first = deliberate.spawn().unwrap();
        tokio::time::timeout(Duration::from_secs(5), deliberate.run(first)).await.expect("the supervisor stops");
        assert_eq!(std::fs::read_to_string(dir.path().join("count")).unwrap().lines().count(), 1);
    }

    #[test]
    fn the_node_log_is_kept_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let supervisor = supervisor(dir.path(), decl(&["true"], &[]));
        std::fs::write(dir.path().join("node.log"), vec![b'x'; 3000]).unwrap();
        supervisor.bound_log();
        assert_eq!(std::fs::metadata(dir.path().join("node.log")).unwrap().len(), 3000, "under the bound: kept");
        std::fs::write(dir.path().join("node.log"), vec![b'y'; 5000]).unwrap();
        supervisor.bound_log();
        assert_eq!(std::fs::metadata(dir.path().join("node.log")).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(dir.path().join("node.log.1")).unwrap().len(), 5000, "the older part moved aside");
    }
}
