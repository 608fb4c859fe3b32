//! Backends and servers at run time: live weights, in-flight counts, connection pools,
//! and the choice of a server for one request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::balance::{self, Balancer, RequestKey, Servers};
use crate::config::{Backend, Server};

use super::pool::Pool;

pub struct ServerRt {
    pub cfg: Server,
    pub name: Arc<str>,
    id_hash: u64,
    /// Effective weight; the balancer reads it on every pick.
    pub weight: AtomicU32,
    pub in_flight: AtomicU32,
    pub pool: Arc<Pool>,
}

pub struct BackendRt {
    pub cfg: Backend,
    pub name: Arc<str>,
    pub servers: Vec<Arc<ServerRt>>,
    balancer: Box<dyn Balancer>,
}

/// A request's claim on a server slot; released when the response ends.
pub struct InFlight {
    server: Arc<ServerRt>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    pub fn server(&self) -> &Arc<ServerRt> {
        &self.server
    }

    /// The server's position in its backend.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl BackendRt {
    pub fn new(cfg: Backend) -> Self {
        let weights: Vec<u32> = cfg.servers.iter().map(|s| s.weight).collect();
        let servers = cfg
            .servers
            .iter()
            .map(|s| {
                Arc::new(ServerRt {
                    name: s.name.as_str().into(),
                    id_hash: balance::hash_bytes(s.name.as_bytes()),
                    weight: AtomicU32::new(s.weight),
                    in_flight: AtomicU32::new(0),
                    pool: Arc::new(Pool::new(cfg.pool_max_idle, cfg.pool_idle_timeout)),
                    cfg: s.clone(),
                })
            })
            .collect();
        Self {
            balancer: balance::build(&cfg.balance, &weights),
            name: cfg.name.as_str().into(),
            servers,
            cfg,
        }
    }

    /// Picks a server and claims a slot on it, skipping `excluded` ones. Backup servers
    /// are used only when no other server can take the request.
    pub fn acquire(&self, key: &RequestKey<'_>, excluded: &mut Vec<usize>) -> Option<InFlight> {
        loop {
            let view = |backup| View {
                backend: self,
                excluded,
                backup,
            };
            let i = self
                .balancer
                .pick(&view(false), key)
                .or_else(|| self.balancer.pick(&view(true), key))?;
            if let Some(slot) = self.claim(i) {
                return Some(slot);
            }
            // It filled up between the pick and the claim: look again without it.
            excluded.push(i);
        }
    }

    /// Claims a slot on server `i` itself, unless it is at its maxconn or has weight 0.
    pub fn claim(&self, i: usize) -> Option<InFlight> {
        let server = &self.servers[i];
        if server.weight.load(Ordering::Relaxed) == 0 || !claim(server) {
            return None;
        }
        Some(InFlight {
            server: Arc::clone(server),
            index: i,
        })
    }

    pub fn purge_idle(&self) {
        for s in &self.servers {
            s.pool.purge();
        }
    }
}

/// Takes a slot unless the server is at its maxconn.
fn claim(server: &ServerRt) -> bool {
    let limit = server.cfg.maxconn.unwrap_or(u32::MAX);
    server
        .in_flight
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

struct View<'a> {
    backend: &'a BackendRt,
    excluded: &'a [usize],
    backup: bool,
}

impl Servers for View<'_> {
    fn count(&self) -> usize {
        self.backend.servers.len()
    }
    fn usable(&self, i: usize) -> bool {
        let s = &self.backend.servers[i];
        s.cfg.backup == self.backup
            && s.weight.load(Ordering::Relaxed) > 0
            && s.in_flight.load(Ordering::Relaxed) < s.cfg.maxconn.unwrap_or(u32::MAX)
            && !self.excluded.contains(&i)
    }
    fn weight(&self, i: usize) -> u32 {
        self.backend.servers[i].weight.load(Ordering::Relaxed)
    }
    fn in_flight(&self, i: usize) -> u32 {
        self.backend.servers[i].in_flight.load(Ordering::Relaxed)
    }
    fn id_hash(&self, i: usize) -> u64 {
        self.backend.servers[i].id_hash
    }
}
