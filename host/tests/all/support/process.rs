//! `ovsb serve` as a separate process, for tests that kill, signal or restart it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::OsbClient;
use super::free_port;

/// How to start `ovsb serve`.
pub struct Launch<'a> {
    /// `OVSB_LOG`.
    pub level: &'a str,
    /// A command that runs ovsb (e.g. `["prlimit", "--nofile=300:300", "--"]`).
    pub wrap: &'a [&'a str],
    /// More environment variables.
    pub env: &'a [(&'a str, &'a str)],
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch { level: "info", wrap: &[], env: &[] }
    }
}

/// One `ovsb serve` process, killed (by PID) on drop.
pub struct Ovsb {
    child: Child,
    pub osb: OsbClient,
}

impl Ovsb {
    /// Starts `ovsb serve --config <dir>/<name>.toml` (its broker and gateway on ports of its
    /// own) and waits until the broker answers.
    pub fn start(dir: &Path, name: &str, config: &str) -> Ovsb {
        Ovsb::start_on(dir, name, config, (free_port(), free_port()))
    }

    /// The same, with the broker and gateway on these ports (a restart keeps its URLs).
    pub fn start_on(dir: &Path, name: &str, config: &str, ports: (u16, u16)) -> Ovsb {
        Ovsb::start_logging(dir, name, config, ports, "info")
    }

    /// The same, logging at `level` (`OVSB_LOG`) into `<dir>/<name>.log`.
    pub fn start_logging(dir: &Path, name: &str, config: &str, ports: (u16, u16), level: &str) -> Ovsb {
        Ovsb::start_with(dir, name, config, ports, Launch { level, ..Launch::default() })
    }

    /// The same, as `launch` says: under a wrapper command (`prlimit …`), with more environment.
    pub fn start_with(dir: &Path, name: &str, config: &str, (broker, gateway): (u16, u16), launch: Launch<'_>) -> Ovsb {
        // Without one, ovsb would keep its store and keys in `.ovsb` of the test's working
        // directory (the repository), shared by every such test.
        let own_data_dir = config.lines().any(|line| line.trim_start().starts_with("data_dir"));
        assert!(own_data_dir, "give the test's ovsb a data_dir of its own (in a temporary directory)");
        let config = config
            .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{broker}\""), 1)
            .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{gateway}\""), 1);
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, config).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap();
        let mut command = match launch.wrap.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_ovsb"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_ovsb")),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&file)
            .env("OVSB_LOG", launch.level)
            .envs(launch.env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ovsb");
        let osb = OsbClient::new(format!("http://127.0.0.1:{broker}"));
        let ovsb = Ovsb { child, osb };
        ovsb.wait_until_up(dir, name);
        ovsb
    }

    fn wait_until_up(&self, dir: &Path, name: &str) {
        let started = Instant::now();
        let addr = self.osb.base.trim_start_matches("http://").to_string();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                // Generous: compiling Python and JavaScript plugins at start takes half a
                // minute each on a busy 2-core machine (the other tests run beside it).
                started.elapsed() < Duration::from_secs(240),
                "ovsb did not start: {}",
                std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "ovsb did not exit within {limit:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id (of the wrapper, when there is one: `prlimit` execs ovsb, so the same).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill_9(&mut self) {
        // Child::kill sends SIGKILL.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Ovsb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
