//! `[global]` across reloads: what a reload applies (maxconn, access_log) and what needs
//! a restart (threads), said rather than ignored.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{AccessLogTarget, Config};
use crate::proxy::log::AccessLog;

/// The connection slots of the whole process (`global.maxconn`).
pub struct Slots {
    free: Arc<Semaphore>,
    /// Slots to take out of use as they come free, after the limit went down while they
    /// were taken.
    owed: AtomicUsize,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Arc::new(Semaphore::new(n)),
            owed: AtomicUsize::new(0),
        }
    }

    /// A slot for one connection, held until it closes.
    pub async fn take(&self) -> OwnedSemaphorePermit {
        loop {
            let permit = Arc::clone(&self.free)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let owed = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
            if owed.is_err() {
                return permit;
            }
            permit.forget();
        }
    }

    fn grow(&self, n: usize) {
        // What was owed is forgiven first.
        let forgiven = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                Some(o.saturating_sub(n))
            })
            .unwrap_or(0)
            .min(n);
        self.free.add_permits(n - forgiven);
    }

    fn shrink(&self, n: usize) {
        let taken = self.free.forget_permits(n);
        self.owed.fetch_add(n - taken, Ordering::AcqRel);
    }
}

/// The `[global]` settings weir runs with now.
pub struct RunningGlobal {
    /// The connection slots of the whole process, and how many there are.
    pub(super) maxconn: Arc<Slots>,
    maxconn_limit: AtomicUsize,
    /// `threads` as weir was started with (0: one per core).
    threads: usize,
    log: Mutex<(AccessLog, AccessLogTarget)>,
    /// What the last config loaded asks for that only a restart applies.
    restart_needed: Mutex<Vec<String>>,
}

/// The running global settings, for the admin API and `weir check --against`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GlobalInfo {
    pub threads: usize,
    pub maxconn: usize,
    pub access_log: String,
    pub restart_needed: Vec<String>,
}

pub fn target_name(t: &AccessLogTarget) -> String {
    match t {
        AccessLogTarget::Stderr => "stderr".into(),
        AccessLogTarget::Off => "off".into(),
        AccessLogTarget::File(p) => p.display().to_string(),
        AccessLogTarget::Syslog(s) => match &s.to {
            crate::config::SyslogAddr::Unix(p) => format!("syslog:{}", p.display()),
            crate::config::SyslogAddr::Udp(a) => format!("syslog:udp://{a}"),
        },
    }
}

impl RunningGlobal {
    pub fn new(config: &Config, log: AccessLog) -> RunningGlobal {
        let g = &config.global;
        RunningGlobal {
            maxconn: Arc::new(Slots::new(g.maxconn)),
            maxconn_limit: AtomicUsize::new(g.maxconn),
            threads: g.threads,
            log: Mutex::new((log, g.access_log.clone())),
            restart_needed: Mutex::new(Vec::new()),
        }
    }

    pub fn maxconn(&self) -> usize {
        self.maxconn_limit.load(Ordering::Relaxed)
    }

    /// The access log requests are written to now.
    pub fn log(&self) -> AccessLog {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// The access log for `config`: the running one when its target did not change, else
    /// one opened now (a file that cannot be opened refuses the reload).
    pub fn log_for(&self, config: &Config) -> std::io::Result<AccessLog> {
        let running = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if running.1 == config.global.access_log {
            return Ok(running.0.clone());
        }
        running.0.retargeted(&config.global.access_log)
    }

    /// Applies what a reload can of `config` (its log from [`Self::log_for`]); returns,
    /// and keeps for the admin API, what needs a restart.
    pub fn apply(&self, config: &Config, log: AccessLog) -> Vec<String> {
        let g = &config.global;
        {
            let mut running = self.log.lock().unwrap_or_else(|p| p.into_inner());
            if running.1 != g.access_log {
                tracing::info!(
                    "global.access_log: now {} (was {})",
                    target_name(&g.access_log),
                    target_name(&running.1)
                );
                *running = (log, g.access_log.clone());
            }
        }
        self.resize(g.maxconn);
        let mut restart = Vec::new();
        if g.threads != self.threads {
            restart.push(format!(
                "global.threads: {} running, {} in the config: restart weir to apply it",
                self.threads, g.threads
            ));
        }
        for line in &restart {
            tracing::warn!("{line}");
        }
        *self
            .restart_needed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = restart.clone();
        restart
    }

    /// Sets the connection limit to `new`. Fewer slots take effect as connections close:
    /// the slots they free are taken out of use before new connections get any.
    fn resize(&self, new: usize) {
        let old = self.maxconn_limit.swap(new, Ordering::Relaxed);
        if new == old {
            return;
        }
        tracing::info!("global.maxconn: now {new} (was {old})");
        if new > old {
            self.maxconn.grow(new - old);
        } else {
            self.maxconn.shrink(old - new);
        }
    }

    pub fn info(&self) -> GlobalInfo {
        GlobalInfo {
            threads: self.threads,
            maxconn: self.maxconn(),
            access_log: target_name(&self.log.lock().unwrap_or_else(|p| p.into_inner()).1),
            restart_needed: self
                .restart_needed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
