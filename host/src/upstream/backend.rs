//! Backends and servers at run time: health, admin state, live weights, in-flight counts,
//! connection pools, the queue, and the choice of a server for one request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::oneshot;

use crate::balance::{self, Balancer, RequestKey, RoundRobin, Servers};
use crate::config::{Backend, Observe, Server};
use crate::stats::Counters;

use super::body::ServerBody;
use super::health::{Health, Observed, Transition};
use super::pool::Pool;

pub use crate::config::AdminState;

impl AdminState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("backend {backend} has no server named {server}")]
    UnknownServer { backend: String, server: String },
    #[error("weight must be between 0 and 256, got {0}")]
    BadWeight(u32),
}

pub struct ServerRt {
    pub cfg: Server,
    pub name: Arc<str>,
    id_hash: u64,
    /// Weight as configured or set at run time; slowstart scales it down for a while.
    pub weight: AtomicU32,
    pub in_flight: AtomicU32,
    pub health: Health,
    admin: AtomicU8,
    pub stats: Arc<Counters>,
    /// The weight was set by an operator (and a reload keeps it).
    weight_set: std::sync::atomic::AtomicBool,
    pub(super) pool: Arc<Pool>,
    queue: Arc<Queue>,
}

impl ServerRt {
    /// Takes over the run-time state of the same server (by name) in the generation
    /// this one replaces: the state and weight operators set, the traffic counters, and,
    /// when it is checked in both and its address is unchanged, its health and check
    /// history.
    fn carried_from(&mut self, old: &ServerRt) {
        self.stats = Arc::clone(&old.stats);
        // The state set at run time, unless the file now says another than it did.
        if old.cfg.state == self.cfg.state {
            self.admin.store(old.admin() as u8, Ordering::Release);
        }
        if old.weight_set.load(Ordering::Acquire) {
            self.weight
                .store(old.weight.load(Ordering::Acquire), Ordering::Release);
            self.weight_set.store(true, Ordering::Release);
        }
        // A server no longer checked starts UP again, as at start: a DOWN carried over
        // would never come back.
        let checked = self.cfg.health.is_some() && old.cfg.health.is_some();
        if checked && old.cfg.addr == self.cfg.addr {
            self.health.take_over(&old.health);
        }
    }

    pub fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Acquire))
    }

    /// May receive new requests: UP, ready, weight above 0.
    pub fn available(&self) -> bool {
        self.health.is_up()
            && self.admin() == AdminState::Ready
            && self.weight.load(Ordering::Relaxed) > 0
    }

    /// The weight the balancer uses now: the set weight, ramped up during slowstart.
    pub fn effective_weight(&self) -> u32 {
        let w = self.weight.load(Ordering::Relaxed);
        let ramp = self.health.ramp(self.cfg.slowstart);
        if ramp >= 1.0 || w == 0 {
            w
        } else {
            ((f64::from(w) * ramp).ceil() as u32).max(1)
        }
    }

    fn has_room(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) < self.cfg.maxconn.unwrap_or(u32::MAX)
    }

    /// Takes a slot unless the server is at its maxconn.
    fn claim(&self) -> bool {
        let limit = self.cfg.maxconn.unwrap_or(u32::MAX);
        let claimed = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        if let Ok(before) = claimed {
            self.stats.selected.fetch_add(1, Ordering::Relaxed);
            self.stats
                .max_in_flight
                .fetch_max(u64::from(before) + 1, Ordering::Relaxed);
        }
        claimed.is_ok()
    }
}

/// Requests waiting for a server slot, first come first served. A slot freed while
/// requests wait is handed to the first of them directly, so maxconn is never exceeded
/// and newcomers cannot overtake the queue.
struct Queue {
    waiters: Mutex<VecDeque<oneshot::Sender<InFlight>>>,
    backend: Weak<BackendRt>,
    /// Most requests ever waiting at once.
    max_seen: AtomicUsize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<oneshot::Sender<InFlight>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request's claim on a server slot; released (or handed to a waiting request) when the
/// response ends.
pub struct InFlight {
    server: Option<Arc<ServerRt>>,
    index: usize,
}

impl InFlight {
    pub fn server(&self) -> &Arc<ServerRt> {
        self.server.as_ref().expect("a live slot has its server")
    }

    /// The server's position in its backend.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Hands the connection of a response body read to its end back to the server's pool
    /// (`now`: when it ended).
    pub fn recycle(&self, body: &mut ServerBody, now: std::time::Instant) {
        if let Some(sender) = body.take_idle() {
            self.server().pool.recycle(sender, now);
        }
    }

    /// Takes the server out without releasing the slot (it is being handed over).
    fn defuse(mut self) -> Arc<ServerRt> {
        self.server.take().expect("a live slot has its server")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        let index = self.index;
        let mut waiters = server.queue.lock();
        if server.available() {
            while let Some(waiter) = waiters.pop_front() {
                match waiter.send(InFlight {
                    server: Some(Arc::clone(&server)),
                    index,
                }) {
                    Ok(()) => return,
                    // That request gave up waiting: take the slot back, offer it to the next.
                    Err(slot) => drop(slot.defuse()),
                }
            }
        }
        let others_wait = !waiters.is_empty();
        drop(waiters);
        server.in_flight.fetch_sub(1, Ordering::AcqRel);
        // This server cannot take the queue's next request, but another one may.
        if others_wait && let Some(backend) = server.queue.backend.upgrade() {
            backend.dispatch_queue();
        }
    }
}

/// Why no slot was granted right away.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// No server can take traffic at all (down, drained, in maintenance): 503 at once.
    NoServer,
    /// Servers are up but all at their maxconn: the request may wait in the queue.
    Full,
}

/// What [`BackendRt::choose`] got.
pub enum Slot {
    Got(InFlight),
    /// A place in the queue, behind this many requests: [`BackendRt::wait`] there.
    Queued(oneshot::Receiver<InFlight>, usize),
    Refused(QueueError),
}

/// Why a queued request got no slot.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    NoServer,
    QueueFull,
    Timeout,
}

pub struct BackendRt {
    pub cfg: Backend,
    pub name: Arc<str>,
    pub servers: Vec<Arc<ServerRt>>,
    balancer: Box<dyn Balancer>,
    /// Hands queued requests to servers that free up: no request key is at hand then.
    dequeue: RoundRobin,
    queue: Arc<Queue>,
    pub stats: Arc<Counters>,
}

impl BackendRt {
    /// A backend at run time; `old`: the same backend in the generation this one
    /// replaces, whose run-time state carries over (see [`ServerRt::carried_from`]).
    pub fn new(cfg: Backend, old: Option<&BackendRt>) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<BackendRt>| {
            let queue = Arc::new(Queue {
                waiters: Mutex::new(VecDeque::new()),
                backend: me.clone(),
                max_seen: AtomicUsize::new(0),
            });
            let weights: Vec<u32> = cfg.servers.iter().map(|s| s.weight).collect();
            let servers = cfg
                .servers
                .iter()
                .map(|s| {
                    let before = old.and_then(|o| o.servers.iter().find(|o| *o.name == *s.name));
                    let mut server = ServerRt {
                        name: s.name.as_str().into(),
                        id_hash: balance::hash_bytes(s.name.as_bytes()),
                        weight: AtomicU32::new(s.weight),
                        in_flight: AtomicU32::new(0),
                        health: Health::default(),
                        admin: AtomicU8::new(s.state as u8),
                        weight_set: std::sync::atomic::AtomicBool::new(false),
                        stats: Arc::default(),
                        // A connection that began with one client's PROXY header
                        // cannot carry another client's requests.
                        pool: Arc::new(Pool::new(
                            if s.send_proxy.is_some() {
                                0
                            } else {
                                cfg.pool_max_idle
                            },
                            cfg.pool_idle_timeout,
                            s.h2,
                        )),
                        queue: Arc::clone(&queue),
                        cfg: s.clone(),
                    };
                    if let Some(before) = before {
                        server.carried_from(before);
                    }
                    Arc::new(server)
                })
                .collect();
            BackendRt {
                balancer: balance::build(&cfg.balance, &weights),
                dequeue: RoundRobin::new(weights.len()),
                name: cfg.name.as_str().into(),
                servers,
                queue,
                cfg,
                // The counters go on across reloads: graphs do not drop to zero.
                stats: old.map(|o| Arc::clone(&o.stats)).unwrap_or_default(),
            }
        })
    }

    /// Which servers may be chosen: the primaries while any is available, else the
    /// backups (all of them with `allbackups`, else the first available one).
    fn view<'a>(&'a self, excluded: &'a [usize]) -> Option<View<'a>> {
        let available = |i: usize| self.servers[i].available() && !excluded.contains(&i);
        if (0..self.servers.len()).any(|i| !self.servers[i].cfg.backup && available(i)) {
            return Some(View {
                backend: self,
                excluded,
                set: Set::Primaries,
            });
        }
        if self.cfg.allbackups {
            let any = (0..self.servers.len()).any(|i| self.servers[i].cfg.backup && available(i));
            return any.then_some(View {
                backend: self,
                excluded,
                set: Set::Backups,
            });
        }
        (0..self.servers.len())
            .find(|&i| self.servers[i].cfg.backup && available(i))
            .map(|i| View {
                backend: self,
                excluded,
                set: Set::Only(i),
            })
    }

    /// Picks a server and claims a slot on it, skipping `excluded` ones.
    pub fn acquire(
        &self,
        key: &RequestKey<'_>,
        excluded: &mut Vec<usize>,
    ) -> Result<InFlight, NoSlot> {
        loop {
            let view = self.view(excluded).ok_or(NoSlot::NoServer)?;
            let i = self.balancer.pick(&view, key).ok_or(NoSlot::Full)?;
            if let Some(slot) = self.claim(i) {
                return Ok(slot);
            }
            // It filled up between the pick and the claim: look again without it.
            excluded.push(i);
        }
    }

    /// Like `acquire`, but when every server is at its maxconn, a place in the backend's
    /// queue (behind the requests already waiting), to wait in with [`Self::wait`].
    fn acquire_or_queue(&self, key: &RequestKey<'_>, excluded: &mut Vec<usize>) -> Slot {
        let mut waiters = self.queue.lock();
        if waiters.is_empty() {
            match self.acquire(key, excluded) {
                Ok(slot) => return Slot::Got(slot),
                Err(NoSlot::NoServer) => return Slot::Refused(QueueError::NoServer),
                Err(NoSlot::Full) => {}
            }
        } else if self.view(excluded).is_none() {
            return Slot::Refused(QueueError::NoServer);
        }
        if self.cfg.maxqueue.is_some_and(|max| waiters.len() >= max) {
            return Slot::Refused(QueueError::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        let ahead = waiters.len();
        waiters.push_back(tx);
        self.queue.max_seen.fetch_max(ahead + 1, Ordering::Relaxed);
        Slot::Queued(rx, ahead)
    }

    /// Waits in the queue up to `timeout.queue` for a slot a finishing request hands over.
    pub async fn wait(&self, place: oneshot::Receiver<InFlight>) -> Result<InFlight, QueueError> {
        match tokio::time::timeout(self.cfg.timeout_queue, place).await {
            Ok(Ok(slot)) => Ok(slot),
            // Dropping the receiver withdraws from the queue: a slot sent to it is passed on.
            Ok(Err(_)) | Err(_) => Err(QueueError::Timeout),
        }
    }

    /// A server slot for one attempt, without waiting: the `pinned` server when it can
    /// take it, else the balancer's pick, else a place in the queue when every server is
    /// full. Once every server has been excluded by failed attempts, any server may be
    /// tried again. (Not async: most requests get a slot at once, and the request's
    /// future then holds no queue-waiting state of its own.)
    pub fn choose(
        &self,
        key: &RequestKey<'_>,
        excluded: &mut Vec<usize>,
        pinned: Option<usize>,
    ) -> Slot {
        if let Some(slot) = pinned.and_then(|i| self.claim_preferred(i)) {
            return Slot::Got(slot);
        }
        match self.acquire_or_queue(key, excluded) {
            Slot::Refused(QueueError::NoServer) if !excluded.is_empty() => {
                excluded.clear();
                self.acquire_or_queue(key, excluded)
            }
            slot => slot,
        }
    }

    /// Hands queued requests to servers with room, as long as there are both.
    pub fn dispatch_queue(&self) {
        let mut waiters = self.queue.lock();
        while !waiters.is_empty() {
            let Some(view) = self.view(&[]) else { return };
            let Some(i) = self.dequeue.pick_where(&view, |i| view.usable(i)) else {
                return;
            };
            let Some(slot) = self.claim(i) else { return };
            let mut slot = Some(slot);
            while let Some(waiter) = waiters.pop_front() {
                match waiter.send(slot.take().expect("a slot to hand over")) {
                    Ok(()) => break,
                    Err(back) => slot = Some(back),
                }
            }
            if let Some(unused) = slot {
                // Nobody left to take it.
                unused.server().in_flight.fetch_sub(1, Ordering::AcqRel);
                drop(unused.defuse());
                return;
            }
        }
    }

    /// Requests on the backend now: in flight on its servers and waiting in its queue.
    pub fn sessions(&self) -> u64 {
        let in_flight: u64 = self
            .servers
            .iter()
            .map(|s| u64::from(s.in_flight.load(Ordering::Relaxed)))
            .sum();
        in_flight + self.queue.lock().len() as u64
    }

    /// Requests waiting now, and the most ever waiting at once.
    pub fn queue_len(&self) -> (usize, usize) {
        (
            self.queue.lock().len(),
            self.queue.max_seen.load(Ordering::Relaxed),
        )
    }

    /// Claims a slot on server `i` itself, unless it cannot take new traffic or is full.
    pub fn claim(&self, i: usize) -> Option<InFlight> {
        let server = &self.servers[i];
        (server.available() && server.claim()).then(|| InFlight {
            server: Some(Arc::clone(server)),
            index: i,
        })
    }

    /// A slot on a server a plugin asked for (a sticky session): as [`Self::claim`], but a
    /// draining or zero-weight server that is up still takes it, as HAProxy's drain lets
    /// persistent sessions through.
    pub fn claim_preferred(&self, i: usize) -> Option<InFlight> {
        let server = &self.servers[i];
        let usable = server.health.is_up() && server.admin() != AdminState::Maint;
        (usable && server.claim()).then(|| InFlight {
            server: Some(Arc::clone(server)),
            index: i,
        })
    }

    pub fn purge_idle(&self) {
        for s in &self.servers {
            s.pool.purge();
        }
    }

    pub fn server_index(&self, name: &str) -> Result<usize, AdminError> {
        self.servers
            .iter()
            .position(|s| &*s.name == name)
            .ok_or_else(|| AdminError::UnknownServer {
                backend: self.cfg.name.clone(),
                server: name.to_owned(),
            })
    }

    /// ready / drain / maint, at run time.
    pub fn set_admin(&self, server: &str, state: AdminState) -> Result<(), AdminError> {
        let s = &self.servers[self.server_index(server)?];
        let before = s.admin.swap(state as u8, Ordering::AcqRel);
        if AdminState::from_u8(before) != state {
            tracing::warn!(
                "server {}/{} is now {state:?} (set by an operator)",
                self.name,
                s.name
            );
            s.health.wake.notify_one();
            self.dispatch_queue();
        }
        Ok(())
    }

    /// The server's weight, at run time (0 to 256).
    pub fn set_weight(&self, server: &str, weight: u32) -> Result<(), AdminError> {
        if weight > 256 {
            return Err(AdminError::BadWeight(weight));
        }
        let s = &self.servers[self.server_index(server)?];
        s.weight.store(weight, Ordering::Release);
        s.weight_set.store(true, Ordering::Release);
        self.dispatch_queue();
        Ok(())
    }

    /// Servers taking traffic, as the transition log counts them.
    pub fn active_count(&self) -> usize {
        self.servers
            .iter()
            .filter(|s| !s.cfg.backup && s.available())
            .count()
    }

    /// Logs a health transition the way HAProxy does, and lets the queue move on one UP.
    pub fn on_transition(&self, i: usize, transition: Transition, reason: &str) {
        let s = &self.servers[i];
        let active = self.active_count();
        match transition {
            Transition::Down => tracing::warn!(
                "server {}/{} is DOWN, {reason}, {active} active servers left",
                self.name,
                s.name
            ),
            Transition::Up => {
                tracing::warn!(
                    "server {}/{} is UP, {reason}, {active} active servers online",
                    self.name,
                    s.name
                );
                self.dispatch_queue();
            }
        }
    }

    /// Counts the outcome of a request on server `i` when the server observes live traffic.
    /// `layer7` marks errors only layer-7 observation counts (bad responses, 5xx, timeouts).
    pub fn observe(&self, i: usize, error: bool, layer7: bool) {
        let s = &self.servers[i];
        let Some(check) = &s.cfg.health else { return };
        let Some(mode) = check.observe else { return };
        if layer7 && mode == Observe::Layer4 {
            return;
        }
        if let Observed::Changed(t) = s.health.observe(error, check) {
            let reason = s
                .health
                .snapshot()
                .last_check
                .map(|r| r.to_string())
                .unwrap_or_default();
            self.on_transition(i, t, &reason);
        }
    }
}

#[derive(Clone, Copy)]
enum Set {
    Primaries,
    Backups,
    Only(usize),
}

struct View<'a> {
    backend: &'a BackendRt,
    excluded: &'a [usize],
    set: Set,
}

impl Servers for View<'_> {
    fn count(&self) -> usize {
        self.backend.servers.len()
    }
    fn usable(&self, i: usize) -> bool {
        let s = &self.backend.servers[i];
        let in_set = match self.set {
            Set::Primaries => !s.cfg.backup,
            Set::Backups => s.cfg.backup,
            Set::Only(only) => i == only,
        };
        in_set && s.available() && s.has_room() && !self.excluded.contains(&i)
    }
    fn weight(&self, i: usize) -> u32 {
        self.backend.servers[i].effective_weight()
    }
    fn in_flight(&self, i: usize) -> u32 {
        self.backend.servers[i].in_flight.load(Ordering::Relaxed)
    }
    fn id_hash(&self, i: usize) -> u64 {
        self.backend.servers[i].id_hash
    }
}
