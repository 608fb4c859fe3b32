//! A server's health: the rise/fall state machine, fed by active checks (`crate::health`)
//! and by passive observation of live traffic.
//!
//! Semantics follow HAProxy: servers start UP; an UP server goes DOWN after `fall`
//! consecutive failed checks, a DOWN server comes UP after `rise` consecutive good ones.
//! While a change is in progress the state reads like HAProxy's ("UP 1/3": UP, one failed
//! check of the three that would take it down).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::config::{HealthCheck, OnError};

/// HAProxy's check status names, as the stats page and CSV show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    L4Ok,
    L4Timeout,
    L4Conn,
    /// The TLS handshake succeeded (a TCP check of a TLS server).
    L6Ok,
    /// The TLS handshake failed.
    L6Response,
    L7Ok,
    L7Timeout,
    L7Response,
    L7Status,
    /// Too many errors observed on live traffic.
    Observed,
}

impl CheckStatus {
    pub fn code(self) -> &'static str {
        match self {
            CheckStatus::L4Ok => "L4OK",
            CheckStatus::L4Timeout => "L4TOUT",
            CheckStatus::L4Conn => "L4CON",
            CheckStatus::L6Ok => "L6OK",
            CheckStatus::L6Response => "L6RSP",
            CheckStatus::L7Ok => "L7OK",
            CheckStatus::L7Timeout => "L7TOUT",
            CheckStatus::L7Response => "L7RSP",
            CheckStatus::L7Status => "L7STS",
            CheckStatus::Observed => "OBS",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CheckStatus::L4Ok => "Layer4 check passed",
            CheckStatus::L4Timeout => "Layer4 timeout",
            CheckStatus::L4Conn => "Layer4 connection problem",
            CheckStatus::L6Ok => "Layer6 check passed",
            CheckStatus::L6Response => "Layer6 invalid response",
            CheckStatus::L7Ok => "Layer7 check passed",
            CheckStatus::L7Timeout => "Layer7 timeout",
            CheckStatus::L7Response => "Layer7 invalid response",
            CheckStatus::L7Status => "Layer7 wrong status",
            CheckStatus::Observed => "Health analyze: too many errors on live traffic",
        }
    }

    pub fn is_ok(self) -> bool {
        matches!(
            self,
            CheckStatus::L4Ok | CheckStatus::L6Ok | CheckStatus::L7Ok
        )
    }
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub status: CheckStatus,
    pub code: Option<u16>,
    pub duration: Duration,
    /// What went wrong, for the log ("connection refused", "body lacks \"ok\"").
    pub detail: String,
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reason: {}", self.status.reason())?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        if let Some(code) = self.code {
            write!(f, ", code: {code}")?;
        }
        write!(f, ", check duration: {}ms", self.duration.as_millis())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Everything the admin surface shows about a server's health.
#[derive(Debug, Clone)]
pub struct Detail {
    pub up: bool,
    /// Consecutive good checks while DOWN.
    pub successes: u32,
    /// Consecutive failed checks while UP.
    pub failures: u32,
    pub last_check: Option<CheckResult>,
    pub last_change: SystemTime,
    changed_at: Instant,
    /// Time spent DOWN before the current state.
    downtime: Duration,
    /// Failed checks since start.
    pub check_failures: u64,
    /// UP → DOWN transitions since start.
    pub down_transitions: u64,
    /// Consecutive errors seen on live traffic.
    pub observed_errors: u32,
    /// Check at fastinter until the checks settle (`on_error = "fastinter"`).
    pub fastinter_forced: bool,
}

impl Detail {
    /// Total time DOWN, including the current stretch.
    pub fn downtime(&self) -> Duration {
        if self.up {
            self.downtime
        } else {
            self.downtime + self.changed_at.elapsed()
        }
    }

    /// "UP", "DOWN", or a change in progress: "UP 1/3", "DOWN 2/2".
    pub fn label(&self, rise: u32, fall: u32) -> String {
        match (self.up, self.failures, self.successes) {
            (true, 0, _) => "UP".into(),
            (true, f, _) => format!("UP {f}/{fall}"),
            (false, _, 0) => "DOWN".into(),
            (false, _, s) => format!("DOWN {s}/{rise}"),
        }
    }

    /// A state change is in progress: checks run at fastinter.
    pub fn changing(&self) -> bool {
        self.fastinter_forced || (self.up && self.failures > 0) || (!self.up && self.successes > 0)
    }
}

pub struct Health {
    up: AtomicBool,
    /// When the server last came back UP, in ms since `epoch()` (0: UP since start).
    up_since_ms: AtomicU64,
    detail: Mutex<Detail>,
    /// Wakes the checker early: fastinter forced, maintenance lifted.
    pub wake: Notify,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Default for Health {
    fn default() -> Self {
        epoch();
        Self {
            up: AtomicBool::new(true),
            up_since_ms: AtomicU64::new(0),
            detail: Mutex::new(Detail {
                up: true,
                successes: 0,
                failures: 0,
                last_check: None,
                last_change: SystemTime::now(),
                changed_at: Instant::now(),
                downtime: Duration::ZERO,
                check_failures: 0,
                down_transitions: 0,
                observed_errors: 0,
                fastinter_forced: false,
            }),
            wake: Notify::new(),
        }
    }
}

/// What an observed error on live traffic asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Nothing,
    Changed(Transition),
}

impl Health {
    /// Takes over the state and check history of `old` (the same server in the
    /// generation a reload replaces).
    pub fn take_over(&self, old: &Health) {
        let detail = old.detail.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.up
            .store(old.up.load(Ordering::Acquire), Ordering::Release);
        self.up_since_ms
            .store(old.up_since_ms.load(Ordering::Acquire), Ordering::Release);
        *self.detail.lock().unwrap_or_else(|p| p.into_inner()) = detail;
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Detail {
        self.lock().clone()
    }

    fn set(&self, d: &mut Detail, up: bool) -> Transition {
        let now = Instant::now();
        if up {
            d.downtime += now.duration_since(d.changed_at);
            self.up_since_ms.store(
                (now.duration_since(epoch()).as_millis() as u64).max(1),
                Ordering::Release,
            );
        } else {
            d.down_transitions += 1;
        }
        d.up = up;
        d.successes = 0;
        d.failures = 0;
        d.fastinter_forced = false;
        d.observed_errors = 0;
        d.changed_at = now;
        d.last_change = SystemTime::now();
        self.up.store(up, Ordering::Release);
        if up { Transition::Up } else { Transition::Down }
    }

    /// Feeds one check result to the state machine; returns the transition it caused.
    pub fn record(&self, result: CheckResult, rise: u32, fall: u32) -> Option<Transition> {
        let mut d = self.lock();
        let ok = result.status.is_ok();
        d.last_check = Some(result);
        if !ok {
            d.check_failures += 1;
        }
        match (d.up, ok) {
            (true, true) => {
                d.failures = 0;
                d.fastinter_forced = false;
                None
            }
            (true, false) => {
                d.failures += 1;
                (d.failures >= fall).then(|| self.set(&mut d, false))
            }
            (false, true) => {
                d.successes += 1;
                (d.successes >= rise).then(|| self.set(&mut d, true))
            }
            (false, false) => {
                d.successes = 0;
                None
            }
        }
    }

    /// Counts a request outcome on live traffic. `error_limit` consecutive errors apply
    /// `on_error`; a success resets the count.
    pub fn observe(&self, error: bool, check: &HealthCheck) -> Observed {
        let mut d = self.lock();
        if !error {
            d.observed_errors = 0;
            return Observed::Nothing;
        }
        d.observed_errors += 1;
        if d.observed_errors < check.error_limit {
            return Observed::Nothing;
        }
        d.observed_errors = 0;
        let result = CheckResult {
            status: CheckStatus::Observed,
            code: None,
            duration: Duration::ZERO,
            detail: format!("{} consecutive errors", check.error_limit),
        };
        match check.on_error {
            OnError::FastInter => {
                d.fastinter_forced = true;
                drop(d);
                self.wake.notify_one();
                Observed::Nothing
            }
            OnError::MarkDown if d.up => {
                d.last_check = Some(result);
                Observed::Changed(self.set(&mut d, false))
            }
            OnError::MarkDown => Observed::Nothing,
            OnError::FailCheck => {
                drop(d);
                match self.record(result, check.rise, check.fall) {
                    Some(t) => Observed::Changed(t),
                    None => Observed::Nothing,
                }
            }
        }
    }

    /// The share of its weight a server gets during slowstart: 0 < f ≤ 1.
    pub fn ramp(&self, slowstart: Option<Duration>) -> f64 {
        let Some(ramp) = slowstart.filter(|d| !d.is_zero()) else {
            return 1.0;
        };
        let since = self.up_since_ms.load(Ordering::Acquire);
        if since == 0 {
            return 1.0;
        }
        let up_for = epoch()
            .elapsed()
            .saturating_sub(Duration::from_millis(since));
        (up_for.as_secs_f64() / ramp.as_secs_f64()).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool) -> CheckResult {
        CheckResult {
            status: if ok {
                CheckStatus::L7Ok
            } else {
                CheckStatus::L7Status
            },
            code: Some(if ok { 200 } else { 503 }),
            duration: Duration::from_millis(1),
            detail: String::new(),
        }
    }

    #[test]
    fn goes_down_after_fall_failures_and_up_after_rise_successes() {
        let h = Health::default();
        assert!(h.is_up());
        assert_eq!(h.record(result(false), 2, 3), None);
        assert_eq!(h.snapshot().label(2, 3), "UP 1/3");
        assert_eq!(h.record(result(false), 2, 3), None);
        assert_eq!(h.record(result(false), 2, 3), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.snapshot().label(2, 3), "DOWN");
        assert_eq!(h.record(result(true), 2, 3), None);
        assert_eq!(h.snapshot().label(2, 3), "DOWN 1/2");
        assert_eq!(h.record(result(true), 2, 3), Some(Transition::Up));
        assert!(h.is_up());
        let d = h.snapshot();
        assert_eq!((d.check_failures, d.down_transitions), (3, 1));
    }

    #[test]
    fn a_success_resets_a_change_in_progress() {
        let h = Health::default();
        h.record(result(false), 2, 2);
        h.record(result(true), 2, 2);
        assert_eq!(h.record(result(false), 2, 2), None);
        assert!(h.is_up());
    }

    #[test]
    fn labels_and_reasons_follow_haproxy() {
        let r = CheckResult {
            status: CheckStatus::L7Status,
            code: Some(503),
            duration: Duration::from_millis(2),
            detail: String::new(),
        };
        assert_eq!(
            r.to_string(),
            "reason: Layer7 wrong status, code: 503, check duration: 2ms"
        );
        assert_eq!(CheckStatus::L4Conn.code(), "L4CON");
    }
}
