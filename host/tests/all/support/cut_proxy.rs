//! A TCP relay a test can cut and restore: how the operations tests take the store away from
//! a running ovsb without touching the shared PostgreSQL server. It is not a stand-in for any
//! component: bytes pass to the real server untouched. Cut, it closes every relayed connection
//! and closes new ones as soon as it accepts them.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct CutProxy {
    pub port: u16,
    cut: watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Relays 127.0.0.1:`port` (chosen by the OS) to `target`.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cut_rx) = watch::channel(false);
        let relay = tokio::spawn(async move {
            // Dropped with this task: every relayed connection ends with it.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut down, _)) = listener.accept().await else { return };
                while connections.try_join_next().is_some() {}
                if *cut_rx.borrow() {
                    continue; // closed at once
                }
                let mut cut_rx = cut_rx.clone();
                connections.spawn(async move {
                    let Ok(mut up) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        CutProxy { port, cut, relay }
    }

    /// Closes every relayed connection, and every new one from now on.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Relays again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// `url` (a PostgreSQL URL) with its host and port replaced by this relay's.
    pub fn url_through(&self, url: &str) -> String {
        let mut parsed = reqwest::Url::parse(url).expect("a database URL");
        parsed.set_host(Some("127.0.0.1")).unwrap();
        parsed.set_port(Some(self.port)).unwrap();
        parsed.to_string()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.relay.abort();
    }
}
