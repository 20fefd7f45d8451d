//! The connection pools (general, reserved, agent links), their caps fitted under the
//! descriptor limit, and the tracked sockets that leave them when closed; see the module doc
//! of [`super`].

use super::*;

/// A handler's hold on its request's connection (a request extension): `close` ends the
/// connection, e.g. when a streamed answer's client stopped reading.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(super) shed: Arc<Notify>,
}

impl ConnectionHandle {
    pub fn close(&self) {
        self.shed.notify_one();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Pool {
    General,
    Reserved,
    Link,
}

pub(super) struct Slot {
    pub(super) pool: Pool,
    /// Set while the connection waits for a request head: its place in the shedding order.
    pub(super) waiting: Option<u64>,
    /// Since when it has waited for a head (with `waiting`): the header-read timeout runs
    /// from here.
    pub(super) waiting_since: Option<tokio::time::Instant>,
    pub(super) shed: Arc<Notify>,
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) slots: HashMap<u64, Slot>,
    /// Connections waiting for a head, oldest first, per pool (general, reserved).
    pub(super) waiting: [BTreeSet<(u64, u64)>; 2],
    pub(super) counts: [usize; 3],
    pub(super) next_id: u64,
    pub(super) next_seq: u64,
}

impl Table {
    pub(super) fn pool_index(p: Pool) -> usize {
        match p {
            Pool::General => 0,
            Pool::Reserved => 1,
            Pool::Link => 2,
        }
    }

    pub(super) fn set_waiting(&mut self, id: u64, waiting: bool) {
        let seq = self.next_seq;
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.pool == Pool::Link {
            return;
        }
        let i = Table::pool_index(slot.pool);
        if let Some(old) = slot.waiting.take() {
            self.waiting[i].remove(&(old, id));
        }
        slot.waiting_since = None;
        if waiting {
            slot.waiting = Some(seq);
            slot.waiting_since = Some(tokio::time::Instant::now());
            self.waiting[i].insert((seq, id));
            self.next_seq += 1;
        }
    }

    /// Closes the connections that have waited for a request head (a head not finished, or
    /// none since the last answer) since before `deadline`; how many. Links never wait.
    pub(super) fn reap_waiting(&mut self, deadline: tokio::time::Instant) -> usize {
        let mut reaped = 0;
        for pool in [Pool::General, Pool::Reserved] {
            // Oldest first: the waiting order is the order in which they began to wait.
            while let Some(&(_, id)) = self.waiting[Table::pool_index(pool)].iter().next() {
                let expired = self
                    .slots
                    .get(&id)
                    .and_then(|s| s.waiting_since)
                    .is_none_or(|since| since <= deadline);
                if !expired {
                    break;
                }
                if let Some(slot) = self.remove(id) {
                    slot.shed.notify_one();
                    reaped += 1;
                }
            }
        }
        reaped
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        let i = Table::pool_index(slot.pool);
        if let Some(seq) = slot.waiting {
            self.waiting[i].remove(&(seq, id));
        }
        self.counts[i] -= 1;
        Some(slot)
    }

    /// Closes the connection of `pool` that has waited longest for a head, if any.
    pub(super) fn shed_oldest(&mut self, pool: Pool) -> bool {
        let Some(&(_, id)) = self.waiting[Table::pool_index(pool)].iter().next() else {
            return false;
        };
        if let Some(slot) = self.remove(id) {
            slot.shed.notify_one();
        }
        true
    }
}

/// The live connections, by pool.
pub struct Connections {
    pub(super) table: Mutex<Table>,
    pub(super) max_general: usize,
    pub(super) max_links: usize,
    pub(super) shed_count: AtomicU64,
    /// Wakes a graceful shutdown waiting for connections to close.
    pub(super) closed: Notify,
}

impl Connections {
    pub(super) fn new(max_general: usize, max_links: usize) -> Connections {
        Connections {
            table: Mutex::new(Table::default()),
            max_general,
            max_links,
            shed_count: AtomicU64::new(0),
            closed: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> parking_lot::MutexGuard<'_, Table> {
        self.table.lock()
    }

    /// Admits a new connection (shedding a waiting one at the cap), or `None` to close it.
    pub(super) fn admit(&self) -> Option<(u64, Pool, Arc<Notify>)> {
        let mut t = self.lock();
        let pool = if t.counts[0] < self.max_general {
            Pool::General
        } else if t.shed_oldest(Pool::General) {
            self.shed_count.fetch_add(1, Ordering::Relaxed);
            Pool::General
        } else if t.counts[1] < limits::HTTP_RESERVED_CONNECTIONS {
            Pool::Reserved
        } else if t.shed_oldest(Pool::Reserved) {
            self.shed_count.fetch_add(1, Ordering::Relaxed);
            Pool::Reserved
        } else {
            return None;
        };
        let id = t.next_id;
        t.next_id += 1;
        let shed = Arc::new(Notify::new());
        t.slots.insert(
            id,
            Slot {
                pool,
                waiting: None,
                waiting_since: None,
                shed: shed.clone(),
            },
        );
        t.counts[Table::pool_index(pool)] += 1;
        t.set_waiting(id, true);
        Some((id, pool, shed))
    }

    pub(super) fn begin_request(&self, id: u64) -> Option<Pool> {
        let mut t = self.lock();
        t.set_waiting(id, false);
        t.slots.get(&id).map(|s| s.pool)
    }

    pub(super) fn end_request(&self, id: u64) {
        self.lock().set_waiting(id, true);
    }

    pub(super) fn links(&self) -> usize {
        self.lock().counts[2]
    }

    /// The connection now carries a link (an agent's WebSocket, or a libprocess peer's
    /// messages): it moves to the links pool, where it is never shed and never times out
    /// waiting for its next request.
    pub(super) fn linked(&self, id: u64) {
        let mut t = self.lock();
        let Some(slot) = t.slots.get_mut(&id) else {
            return;
        };
        if slot.pool == Pool::Link {
            return;
        }
        let from = Table::pool_index(slot.pool);
        slot.pool = Pool::Link;
        slot.waiting_since = None;
        if let Some(seq) = slot.waiting.take() {
            t.waiting[from].remove(&(seq, id));
        }
        t.counts[from] -= 1;
        t.counts[2] += 1;
    }

    pub(super) fn close(&self, id: u64) {
        self.lock().remove(id);
        self.closed.notify_waiters();
    }

    /// Connections in the general and reserved pools (not agent links).
    pub(super) fn http_count(&self) -> usize {
        let t = self.lock();
        t.counts[0] + t.counts[1]
    }
}

/// The caps for the general pool and the agent links, fitted under the descriptor limit
/// (raised to the hard limit first).
pub(super) fn fit_caps(config: &HttpConfig) -> (usize, usize) {
    let limit = raise_nofile_limit();
    let budget = limit
        .saturating_sub(limits::FD_SPARE + limits::HTTP_RESERVED_CONNECTIONS)
        .max(2);
    let mut links = config.agent_links_max;
    let mut general = config
        .max_connections
        .unwrap_or(limits::HTTP_CONNECTIONS_MAX);
    if general + links > budget {
        if config.max_connections.is_some() && general < budget {
            links = budget - general;
        } else {
            links = links.min(budget * 2 / 3);
            general = general.min(budget - links).max(1);
        }
        // Only a cap the operator asked for is worth a warning; the defaults are meant to
        // shrink on a host with a low descriptor limit.
        if config.max_connections.is_some() {
            tracing::warn!(
                descriptor_limit = limit,
                max_connections = general,
                agent_links_max = links,
                "connection caps lowered to fit the descriptor limit"
            );
        } else {
            tracing::info!(
                descriptor_limit = limit,
                max_connections = general,
                agent_links_max = links,
                "connection caps fitted to the descriptor limit"
            );
        }
    }
    (general, links)
}

/// Raises the soft RLIMIT_NOFILE to the hard one; the soft limit after.
pub(super) fn raise_nofile_limit() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
}

/// A connection's socket; closing it (dropping, also after an upgrade) leaves the pools.
pub(super) struct TrackedStream {
    pub(super) inner: TcpStream,
    pub(super) conns: Arc<Connections>,
    pub(super) id: u64,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.conns.close(self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// ---------------------------------------------------------------- bodies in flight

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_is_shed_and_busy_ones_are_kept() {
        let c = Connections::new(2, 10);
        let (a, _, _) = c.admit().unwrap();
        let (b, _, _) = c.admit().unwrap();
        assert_eq!(c.begin_request(b), Some(Pool::General));
        // At the cap: `a` waits for a head, `b` is busy: `a` goes.
        let (d, pool, _) = c.admit().unwrap();
        assert_eq!(pool, Pool::General);
        assert!(!c.lock().slots.contains_key(&a));
        // Both busy now: the next goes to the reserved pool.
        c.begin_request(d);
        let (e, pool, _) = c.admit().unwrap();
        assert_eq!(pool, Pool::Reserved);
        c.linked(b);
        assert_eq!(c.links(), 1);
        c.end_request(b); // an upgraded link never waits again
        assert!(c.lock().waiting[0].is_empty());
        c.close(e);
        c.close(b);
        assert_eq!(c.http_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_waiting_too_long_for_a_head_are_reaped_links_never() {
        let c = Connections::new(10, 10);
        let (idle, _, _) = c.admit().unwrap();
        let (link, _, _) = c.admit().unwrap();
        let (busy, _, _) = c.admit().unwrap();
        c.begin_request(link);
        c.linked(link);
        c.end_request(link);
        c.begin_request(busy);
        tokio::time::advance(Duration::from_secs(10)).await;
        let (young, _, _) = c.admit().unwrap();
        tokio::time::advance(Duration::from_secs(6)).await;
        // 15 s timeout: `idle` has waited 16 s, `young` 6 s; `busy` has a request in flight.
        let deadline = tokio::time::Instant::now() - Duration::from_secs(15);
        assert_eq!(c.lock().reap_waiting(deadline), 1);
        let t = c.lock();
        assert!(!t.slots.contains_key(&idle));
        assert!(t.slots.contains_key(&young));
        assert!(t.slots.contains_key(&busy));
        assert!(t.slots.contains_key(&link));
    }
}
