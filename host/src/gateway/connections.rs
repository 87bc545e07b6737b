//! # Connection admission: who may hold a gateway connection, and for how long
//!
//! Owns the accounting of every gateway connection for its whole life, HTTP keep-alive and
//! WebSocket alike: a [`Ticket`] is taken at accept and travels inside the socket
//! ([`Counted`]), so an upgraded WebSocket keeps its ticket until the socket closes.
//!
//! The rules, in the order they are checked:
//! - **per source address**: at most `per_source` connections from one IP. When a source is full,
//!   its oldest anonymous connection is closed to make room (behind a NAT or a proxy, one
//!   address's idle strangers cannot lock out its keyed clients); only when every connection of
//!   the source is keyed is a newcomer refused;
//! - **in all**: at most `total`. When the gateway is full, the oldest connection that has not
//!   yet sent a request with a valid key (an *anonymous* one) is closed to make room, so idle
//!   strangers can never lock out a keyed client; only when every connection is keyed is a
//!   newcomer refused;
//! - **per key**: a connection is counted under the first valid key it presents; at most
//!   `per_key` connections carry one key;
//! - **per instance**: at most `per_instance` connections carry the keys of one instance
//!   together (a tenant cannot take more by making more bindings).
//!
//! Anonymous connections also have a short life: the connection task closes one that presents no
//! valid key within `anonymous_timeout` (see `gateway::serve`).
//!
//! A connection belongs to its key only while the key is live: the ticket keeps the key's
//! revocation token and expiry ([`Ticket::watch_key`]), and the connection task closes the
//! connection (after the request in progress, if any) when the key is revoked or expires, so
//! its slot comes back at once.
//!
//! Must not: hold its lock across an await, or grow without bound (every map entry goes when its
//! count reaches zero).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::routes::KeyDigest;

/// The limits admission enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections in all.
    pub total: u32,
    /// Connections from one source address.
    pub per_source: u32,
    /// Connections carrying one key.
    pub per_key: u32,
    /// Connections carrying the keys of one instance.
    pub per_instance: u32,
}

/// Why a connection (or its first keyed request) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every connection slot holds a keyed connection.
    Full,
    /// This source address holds its share.
    Source,
    /// This key's connections hold its share.
    Key,
    /// The connections of this instance's keys hold its share.
    Instance,
}

impl Refused {
    /// The message of the 429 answer.
    pub fn message(self) -> &'static str {
        match self {
            Refused::Full => "too many connections; retry later",
            Refused::Source => "too many connections from this address; retry later",
            Refused::Key => "too many connections with this key; retry later",
            Refused::Instance => "too many connections with this instance's keys; retry later",
        }
    }

    /// A stable name for `data.reason` and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "connections",
            Refused::Source => "connections_per_source",
            Refused::Key => "connections_per_key",
            Refused::Instance => "connections_per_instance",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: u32,
    by_source: HashMap<IpAddr, u32>,
    by_key: HashMap<KeyDigest, u32>,
    by_instance: HashMap<Arc<str>, u32>,
    /// Anonymous connections, oldest first, with the token that closes each.
    anonymous: BTreeMap<u64, (IpAddr, CancellationToken)>,
    /// The same, by source.
    anonymous_of: HashMap<IpAddr, std::collections::BTreeSet<u64>>,
    next_id: u64,
}

impl Counts {
    fn add_anonymous(&mut self, id: u64, source: IpAddr, close: CancellationToken) {
        self.anonymous.insert(id, (source, close));
        self.anonymous_of.entry(source).or_default().insert(id);
    }

    /// Takes connection `id` off the anonymous lists; whether it was there.
    fn remove_anonymous(&mut self, id: u64) -> bool {
        let Some((source, _)) = self.anonymous.remove(&id) else { return false };
        self.forget_anonymous_of(source, id);
        true
    }

    fn forget_anonymous_of(&mut self, source: IpAddr, id: u64) {
        if let Some(ids) = self.anonymous_of.get_mut(&source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.anonymous_of.remove(&source);
            }
        }
    }

    /// Closes the oldest anonymous connection (of `source`, if given) and gives its slot back;
    /// whether there was one.
    fn evict_anonymous(&mut self, source: Option<IpAddr>) -> bool {
        let id = match source {
            Some(source) => match self.anonymous_of.get(&source).and_then(|ids| ids.first()) {
                Some(id) => *id,
                None => return false,
            },
            None => match self.anonymous.first_key_value() {
                Some((id, _)) => *id,
                None => return false,
            },
        };
        let Some((evicted_source, close)) = self.anonymous.remove(&id) else { return false };
        self.forget_anonymous_of(evicted_source, id);
        close.cancel();
        self.release_source(evicted_source);
        true
    }

    fn release_source(&mut self, source: IpAddr) {
        self.total -= 1;
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
    }
}

/// The gateway's connection accounting. One per gateway.
pub struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
}

/// Figures for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionStats {
    /// Connections open.
    pub total: u32,
    /// Of which anonymous.
    pub anonymous: u32,
}

impl Admission {
    /// Accounting under these limits.
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Admission { limits, counts: Mutex::new(Counts::default()) })
    }

    /// The limits.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Connections open now.
    pub fn stats(&self) -> AdmissionStats {
        let counts = self.lock();
        AdmissionStats { total: counts.total, anonymous: counts.anonymous.len() as u32 }
    }

    /// Admits a new connection from `source`, closing the oldest anonymous one if the gateway is
    /// full. The ticket must live as long as the connection's socket.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Arc<Ticket>, Refused> {
        let mut counts = self.lock();
        if counts.by_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source
            && !counts.evict_anonymous(Some(source))
        {
            return Err(Refused::Source);
        }
        if counts.total >= self.limits.total && !counts.evict_anonymous(None) {
            return Err(Refused::Full);
        }
        counts.total += 1;
        *counts.by_source.entry(source).or_insert(0) += 1;
        let id = counts.next_id;
        counts.next_id += 1;
        let close = CancellationToken::new();
        counts.add_anonymous(id, source, close.clone());
        Ok(Arc::new(Ticket {
            admission: self.clone(),
            id,
            source,
            key: OnceLock::new(),
            instance: OnceLock::new(),
            close,
            watch: OnceLock::new(),
            watched: tokio::sync::Notify::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One admitted connection. Dropping the last clone gives its slot back.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    source: IpAddr,
    key: OnceLock<KeyDigest>,
    /// The instance whose share the connection counts against.
    instance: OnceLock<Arc<str>>,
    close: CancellationToken,
    /// The key's revocation token and expiry (Unix ms), once the connection is keyed.
    watch: OnceLock<(CancellationToken, Option<i64>)>,
    watched: tokio::sync::Notify,
}

impl Ticket {
    /// From now on the connection ends when its key is revoked (`revoked` fires) or expires
    /// (`expires_ms`). Only the first call counts.
    pub fn watch_key(&self, revoked: CancellationToken, expires_ms: Option<i64>) {
        if self.watch.set((revoked, expires_ms)).is_ok() {
            self.watched.notify_one();
        }
    }

    /// Completes when the key the connection is counted under is revoked or expires; pending
    /// while the connection has no key.
    pub async fn key_gone(&self) {
        if self.watch.get().is_none() {
            self.watched.notified().await;
        }
        let Some((revoked, expires_ms)) = self.watch.get() else {
            return std::future::pending().await;
        };
        match expires_ms {
            None => revoked.cancelled().await,
            Some(expires_ms) => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let left = std::time::Duration::from_millis(expires_ms.saturating_sub(now_ms).max(0) as u64);
                tokio::select! {
                    _ = revoked.cancelled() => {}
                    _ = tokio::time::sleep(left) => {}
                }
            }
        }
    }

    /// [`present_key_of`](Self::present_key_of) without an instance.
    pub fn present_key(&self, key: &KeyDigest) -> Result<(), Refused> {
        self.present_key_of(key, None)
    }

    /// Counts the connection under `key` (and its instance's share, if given) on its first valid
    /// key (later keys on the same keep-alive connection are served, but the connection stays
    /// counted under the first). Refused when the key, or the instance, holds its share.
    pub fn present_key_of(&self, key: &KeyDigest, instance: Option<&Arc<str>>) -> Result<(), Refused> {
        if self.key.get().is_some() {
            return Ok(());
        }
        let mut counts = self.admission.lock();
        if self.key.get().is_some() {
            return Ok(());
        }
        if !counts.remove_anonymous(self.id) {
            // Evicted a moment ago: the connection is closing.
            return Err(Refused::Full);
        }
        let held = counts.by_key.get(key).copied().unwrap_or(0);
        if held >= self.admission.limits.per_key {
            counts.add_anonymous(self.id, self.source, self.close.clone());
            return Err(Refused::Key);
        }
        if let Some(instance) = instance {
            if counts.by_instance.get(instance).copied().unwrap_or(0) >= self.admission.limits.per_instance {
                counts.add_anonymous(self.id, self.source, self.close.clone());
                return Err(Refused::Instance);
            }
            *counts.by_instance.entry(instance.clone()).or_insert(0) += 1;
            let _ = self.instance.set(instance.clone());
        }
        *counts.by_key.entry(*key).or_insert(0) += 1;
        let _ = self.key.set(*key);
        Ok(())
    }

    /// Whether the connection has presented a valid key.
    pub fn keyed(&self) -> bool {
        self.key.get().is_some()
    }

    /// Cancelled when admission closes this connection to make room.
    pub fn evicted(&self) -> &CancellationToken {
        &self.close
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        if let Some(key) = self.key.get() {
            if let Some(n) = counts.by_key.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    counts.by_key.remove(key);
                }
            }
            if let Some(instance) = self.instance.get()
                && let Some(n) = counts.by_instance.get_mut(instance)
            {
                *n -= 1;
                if *n == 0 {
                    counts.by_instance.remove(instance);
                }
            }
            counts.release_source(self.source);
        } else if counts.remove_anonymous(self.id) {
            counts.release_source(self.source);
        }
        // Else it was evicted, and its slot was given back then.
    }
}

/// A socket that carries its connection's ticket, so the slot is held exactly as long as the
/// socket is open, through an upgrade to WebSocket too.
pub struct Counted<S> {
    io: S,
    _ticket: Arc<Ticket>,
}

impl<S> Counted<S> {
    /// Wraps `io`.
    pub fn new(io: S, ticket: Arc<Ticket>) -> Self {
        Counted { io, _ticket: ticket }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The descriptors the gateway may use for client connections: `configured`, lowered so that
/// the connections, the upstream socket each may open, and as many proxied subscriptions (each a
/// socket to the node) fit in the process's descriptor limit after `reserve` (read from
/// `RLIMIT_NOFILE`, soft limit, after raising it to the hard limit).
pub fn connection_budget(configured: u32, reserve: u32) -> u32 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    let Some(soft) = limit.current else { return configured };
    let usable = soft.saturating_sub(u64::from(reserve)) / 3;
    let budget = configured.min(u32::try_from(usable).unwrap_or(u32::MAX)).max(1);
    let default = crate::config::GatewaySettings::default().max_connections;
    match lowered(configured, budget, default) {
        Some(Lowered::Setting) => tracing::warn!(
            configured,
            budget,
            descriptor_limit = soft,
            reserve,
            "gateway.max_connections lowered to fit the descriptor limit (each connection may also open one upstream socket)"
        ),
        Some(Lowered::Default) => tracing::info!(
            default = configured,
            budget,
            descriptor_limit = soft,
            reserve,
            "the gateway takes {budget} connections at once (the descriptor limit; raise `ulimit -n` for more)"
        ),
        None => {}
    }
    budget
}

/// What lowering the connection budget is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lowered {
    /// The operator's own `gateway.max_connections`: worth a warning.
    Setting,
    /// The default: the descriptor limit is the real bound, said once at info.
    Default,
}

/// Whether `budget` lowers `configured`, and whether that was the operator's setting (anything
/// but `default`).
fn lowered(configured: u32, budget: u32, default: u32) -> Option<Lowered> {
    match (budget < configured, configured == default) {
        (false, _) => None,
        (true, true) => Some(Lowered::Default),
        (true, false) => Some(Lowered::Setting),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_operators_own_max_connections_lowered_is_a_warning() {
        assert_eq!(lowered(8192, 8192, 8192), None);
        assert_eq!(lowered(100, 100, 8192), None);
        assert_eq!(lowered(8192, 300, 8192), Some(Lowered::Default));
        assert_eq!(lowered(20000, 300, 8192), Some(Lowered::Setting));
        assert_eq!(lowered(1000, 300, 8192), Some(Lowered::Setting));
    }

    #[tokio::test]
    async fn a_keyed_ticket_learns_when_its_key_is_revoked_or_expires() {
        let admission = limits(10, 10, 10);
        let ticket = admission.admit(A).unwrap();
        let gone = tokio::time::timeout(std::time::Duration::from_millis(20), ticket.key_gone()).await;
        assert!(gone.is_err(), "no key yet: nothing to wait for");
        ticket.present_key(&[1; 32]).unwrap();
        let revoked = CancellationToken::new();
        ticket.watch_key(revoked.clone(), None);
        revoked.cancel();
        ticket.key_gone().await;

        let expiring = admission.admit(A).unwrap();
        expiring.watch_key(CancellationToken::new(), Some(0));
        tokio::time::timeout(std::time::Duration::from_secs(5), expiring.key_gone()).await.expect("expired");
    }

    fn limits(total: u32, per_source: u32, per_key: u32) -> Arc<Admission> {
        Admission::new(AdmissionLimits { total, per_source, per_key, per_instance: total })
    }

    #[test]
    fn the_keys_of_one_instance_share_its_connections() {
        let admission = Admission::new(AdmissionLimits { total: 100, per_source: 100, per_key: 100, per_instance: 2 });
        let (tenant, other): (Arc<str>, Arc<str>) = (Arc::from("tenant"), Arc::from("other"));
        let tickets: Vec<_> = (0..4).map(|_| admission.admit(A).unwrap()).collect();
        tickets[0].present_key_of(&[1; 32], Some(&tenant)).unwrap();
        tickets[1].present_key_of(&[2; 32], Some(&tenant)).unwrap();
        assert_eq!(tickets[2].present_key_of(&[3; 32], Some(&tenant)), Err(Refused::Instance), "a third key");
        tickets[3].present_key_of(&[4; 32], Some(&other)).unwrap();
        drop(tickets);
        assert!(admission.lock().by_instance.is_empty());
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    #[test]
    fn a_full_gateway_closes_the_oldest_anonymous_connection_for_a_newcomer() {
        let admission = limits(2, 10, 10);
        let first = admission.admit(A).unwrap();
        let second = admission.admit(A).unwrap();
        second.present_key(&[1; 32]).unwrap();
        let third = admission.admit(B).unwrap();
        assert!(first.evicted().is_cancelled(), "the oldest anonymous connection makes room");
        assert!(!second.evicted().is_cancelled() && !third.evicted().is_cancelled());
        assert_eq!(admission.stats(), AdmissionStats { total: 2, anonymous: 1 });
        drop(first);
        assert_eq!(admission.stats().total, 2, "an evicted ticket gave its slot back once, at eviction");
        third.present_key(&[2; 32]).unwrap();
        assert_eq!(admission.admit(B).err(), Some(Refused::Full), "only keyed connections left");
        drop((second, third));
        assert_eq!(admission.stats(), AdmissionStats::default());
        assert!(admission.lock().by_source.is_empty() && admission.lock().by_key.is_empty());
    }

    #[test]
    fn a_full_source_closes_its_own_oldest_anonymous_connection_and_refuses_only_when_all_are_keyed() {
        let admission = limits(100, 2, 10);
        let first = admission.admit(A).unwrap();
        let second = admission.admit(A).unwrap();
        let other = admission.admit(B).unwrap();
        let third = admission.admit(A).unwrap();
        assert!(first.evicted().is_cancelled(), "the source's oldest anonymous connection makes room");
        assert!(!other.evicted().is_cancelled(), "another source's is not touched");
        second.present_key(&[1; 32]).unwrap();
        third.present_key(&[2; 32]).unwrap();
        assert_eq!(admission.admit(A).err(), Some(Refused::Source), "only keyed connections left there");
        assert_eq!(admission.stats(), AdmissionStats { total: 3, anonymous: 1 });
        drop((first, second, third, other));
        assert_eq!(admission.stats(), AdmissionStats::default());
        assert!(admission.lock().anonymous_of.is_empty() && admission.lock().by_source.is_empty());
    }

    #[test]
    fn sources_and_keys_have_their_own_shares() {
        let admission = limits(100, 2, 1);
        let a1 = admission.admit(A).unwrap();
        let a2 = admission.admit(A).unwrap();
        a1.present_key(&[9; 32]).unwrap();
        a2.present_key(&[10; 32]).unwrap();
        assert_eq!(admission.admit(A).err(), Some(Refused::Source));
        drop((a1, a2));
        let a1 = admission.admit(A).unwrap();
        let b1 = admission.admit(B).unwrap();
        a1.present_key(&[7; 32]).unwrap();
        assert_eq!(b1.present_key(&[7; 32]), Err(Refused::Key));
        assert!(!b1.keyed());
        drop(a1);
        b1.present_key(&[7; 32]).unwrap();
        let a2 = admission.admit(A).unwrap();
        a2.present_key(&[8; 32]).unwrap();
        assert_eq!(admission.admit(A).map(|_| ()), Ok(()), "a closed connection frees its source's slot");
    }
}
