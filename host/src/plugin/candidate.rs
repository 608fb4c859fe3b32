//! A plugin's candidate version (`candidate = { ..., mode = ... }`), a plugin of its own
//! ("<name> (candidate)": its own instances, limits, call statistics, counters and kv).
//!
//! - In shadow, after the current version's `on-request` decided, the candidate gets the
//!   same request on the shadow thread ([`super::shadow_thread`]), so that the request
//!   never waits for it and its thread never runs it; its decision is compared with the
//!   current one's and thrown away.
//! - As a canary, it decides instead of the current version for a share of clients (by a
//!   hash of the client's address, so a client stays on one side), and is taken out by
//!   itself when too many of its calls fail.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;

use super::{HookError, Plugin, RequestDecision, RequestInfo, ResponseDecision, ResponseInfo};
use crate::config::CandidateMode;

mod outcome;
use outcome::{Outcome, OwnedRequest, OwnedResponse};

/// Disagreeing requests kept for the runtime API: the latest ones.
const SAMPLE: usize = 32;
/// Shadow calls queued or running at once past which new ones are skipped (and counted):
/// a slow candidate never piles up work. Room for what a busy frontend queues between two
/// of the shadow thread's turns (every millisecond while jobs keep coming).
const MAX_IN_FLIGHT: usize = 1024;
/// A canary is judged on a window with at least this many calls.
pub const MIN_CALLS: u64 = 20;

/// A plugin's candidate version, loaded.
pub struct Candidate {
    pub plugin: Arc<Plugin>,
    pub mode: CandidateMode,
    /// The sample shows header values (`sample_values = true`).
    sample_values: bool,
    pub stats: Arc<ShadowStats>,
    in_flight: Arc<AtomicUsize>,
    /// Whether it was taken out, and how ([`Taken`]): it then runs no more.
    taken: AtomicU8,
    /// A canary's calls and failures in the window now running.
    window: Mutex<Window>,
}

/// How a candidate was taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Through the runtime API (`abort`).
    ByHand,
    /// A canary whose calls failed more than `max_failures` allows.
    ByFailures,
}

struct Window {
    started: Instant,
    calls: u64,
    failures: u64,
}

/// What the shadow saw: agreements and disagreements by kind, and the latest disagreeing
/// requests. Kept across reloads while the candidate's component stays the same.
#[derive(Default)]
pub struct ShadowStats {
    pub request: Counts,
    pub response: Counts,
    /// Requests not shadowed because `MAX_IN_FLIGHT` calls were queued or running.
    pub skipped: AtomicU64,
    /// The CPU time the shadow calls used (their tasks' polls on the shadow thread, the
    /// comparison included): what shadowing costs apart from the requests.
    pub cpu_ns: AtomicU64,
    sample: Mutex<VecDeque<Disagreement>>,
}

/// Comparisons of one hook, by outcome.
#[derive(Default)]
pub struct Counts {
    pub agree: AtomicU64,
    /// One answered the request and the other did not, or their answers differ.
    pub status: AtomicU64,
    /// Another backend or server.
    pub backend: AtomicU64,
    /// Other header edits, or another path.
    pub edits: AtomicU64,
    /// The candidate failed where the current version did not.
    pub trap: AtomicU64,
    pub timeout: AtomicU64,
    pub invalid: AtomicU64,
}

impl Counts {
    /// `(kind, count)` for each outcome, agreements first.
    pub fn all(&self) -> [(&'static str, u64); 7] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("agree", n(&self.agree)),
            ("status", n(&self.status)),
            ("backend", n(&self.backend)),
            ("edits", n(&self.edits)),
            ("trap", n(&self.trap)),
            ("timeout", n(&self.timeout)),
            ("invalid", n(&self.invalid)),
        ]
    }

    /// Comparisons made, and how many of them disagreed.
    pub fn compared(&self) -> (u64, u64) {
        let all = self.all();
        let compared = all.iter().map(|(_, n)| n).sum();
        (compared, compared - all[0].1)
    }

    fn counter(&self, kind: &str) -> &AtomicU64 {
        match kind {
            "status" => &self.status,
            "backend" => &self.backend,
            "edits" => &self.edits,
            "trap" => &self.trap,
            "timeout" => &self.timeout,
            "invalid" => &self.invalid,
            _ => &self.agree,
        }
    }
}

/// One disagreeing request, as the runtime API shows it (no header values).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Disagreement {
    pub hook: &'static str,
    pub kind: &'static str,
    pub method: String,
    pub path: String,
    pub current: String,
    pub candidate: String,
}

impl ShadowStats {
    /// The latest disagreements, oldest first.
    pub fn sample(&self) -> Vec<Disagreement> {
        let sample = self.sample.lock().unwrap_or_else(|p| p.into_inner());
        sample.iter().cloned().collect()
    }

    /// Counts one comparison of `hook` and keeps a disagreement in the sample. `values`:
    /// whether the sample shows header values.
    fn record(
        &self,
        hook: Hook,
        (method, path): (&str, &str),
        current: &Outcome,
        got: &Result<Outcome, HookError>,
        values: bool,
    ) {
        let (kind, candidate) = match got {
            Ok(outcome) => (current.differs(outcome), outcome.text(values)),
            Err(e) => {
                let kind = match e {
                    HookError::Timeout(_) => "timeout",
                    HookError::Invalid(_) => "invalid",
                    HookError::Trap(_) | HookError::StoreDown => "trap",
                };
                (Some(kind), format!("failed: {e}"))
            }
        };
        let counts = match hook {
            Hook::Request => &self.request,
            Hook::Response => &self.response,
        };
        counts
            .counter(kind.unwrap_or("agree"))
            .fetch_add(1, Ordering::Relaxed);
        let Some(kind) = kind else {
            return;
        };
        let mut sample = self.sample.lock().unwrap_or_else(|p| p.into_inner());
        if sample.len() == SAMPLE {
            sample.pop_front();
        }
        sample.push_back(Disagreement {
            hook: hook.name(),
            kind,
            method: method.to_owned(),
            path: path.to_owned(),
            current: current.text(values),
            candidate,
        });
    }
}

/// The hooks a shadow compares.
#[derive(Clone, Copy)]
enum Hook {
    Request,
    Response,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Request => "on-request",
            Hook::Response => "on-response",
        }
    }
}

/// What a shadowed request leaves for its response: the candidate's own note, once its
/// `on-request` returned (nothing when it failed).
pub type ShadowNote = tokio::sync::oneshot::Receiver<Option<String>>;

impl Candidate {
    /// `previous`: the same plugin's candidate in the generation before, whose statistics
    /// go on when its component is the same.
    pub fn new(
        plugin: Plugin,
        cfg: &crate::config::Candidate,
        previous: Option<&Candidate>,
    ) -> Candidate {
        let mode = cfg.mode;
        let stats = previous
            .filter(|p| p.plugin.sha256 == plugin.sha256)
            .map_or_else(Arc::default, |p| Arc::clone(&p.stats));
        Candidate {
            plugin: Arc::new(plugin),
            mode,
            sample_values: cfg.sample_values,
            stats,
            in_flight: Arc::default(),
            taken: AtomicU8::new(0),
            window: Mutex::new(Window {
                started: Instant::now(),
                calls: 0,
                failures: 0,
            }),
        }
    }

    /// Takes it out (until a reload loads it again): the current version decides for
    /// every request. False when it was out already.
    pub fn take_out(&self, how: Taken) -> bool {
        let code = match how {
            Taken::ByHand => 1,
            Taken::ByFailures => 2,
        };
        self.taken
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Whether it was taken out, and how.
    pub fn taken(&self) -> Option<Taken> {
        match self.taken.load(Ordering::Relaxed) {
            0 => None,
            1 => Some(Taken::ByHand),
            _ => Some(Taken::ByFailures),
        }
    }

    pub fn aborted(&self) -> bool {
        self.taken().is_some()
    }

    /// Whether this canary decides for the client at `client_ip` (a stable share of
    /// addresses: the same client always gets the same answer).
    pub fn decides(&self, client_ip: &str) -> bool {
        let CandidateMode::Canary { percent, .. } = self.mode else {
            return false;
        };
        if self.aborted() {
            return false;
        }
        // FNV-1a: stable for an address whatever the process.
        let hash = client_ip.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        ((hash % 10_000) as f64) < percent * 100.0
    }

    /// Counts one of a canary's calls; takes it out when, in the window now running, at
    /// least [`MIN_CALLS`] calls were made and more than `max_failures` of them failed.
    pub fn note_call(&self, ok: bool, plugin: &str) {
        let CandidateMode::Canary {
            max_failures,
            window,
            ..
        } = self.mode
        else {
            return;
        };
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.started.elapsed() >= window {
            *w = Window {
                started: Instant::now(),
                calls: 0,
                failures: 0,
            };
        }
        w.calls += 1;
        w.failures += u64::from(!ok);
        let (calls, failures) = (w.calls, w.failures);
        drop(w);
        if calls >= MIN_CALLS
            && failures as f64 > max_failures * calls as f64
            && self.take_out(Taken::ByFailures)
        {
            tracing::warn!(
                "plugin {plugin}: candidate taken out: {failures} of its last {calls} calls failed \
                 (max_failures {}% within {})",
                max_failures * 100.0,
                humantime(window),
            );
        }
    }

    /// Whether a shadow call may start now: a shadow that runs, with room for one more
    /// call (else the request is counted as skipped).
    fn may_shadow(&self) -> bool {
        if self.mode != CandidateMode::Shadow || self.aborted() {
            return false;
        }
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Runs the candidate's `on-request` on what the current version was given, on the shadow
    /// thread, and counts how its decision compares with `current`'s. The note its
    /// `on-request` leaves comes back for [`Self::shadow_response`].
    pub fn shadow_request(
        &self,
        request: &RequestInfo<'_>,
        headers: &HeaderMap,
        id: u64,
        current: &RequestDecision,
    ) -> Option<ShadowNote> {
        if !self.may_shadow() {
            return None;
        }
        let current = Outcome::of_request(current);
        let owned = OwnedRequest::of(request, self.plugin.request_fields);
        // Only the headers the candidate reads: copying them is on the request's path
        // (none at all for a candidate that reads none).
        let headers = match &self.plugin.request_headers {
            Some(read) if read.is_empty() => None,
            Some(read) => Some({
                let mut only = HeaderMap::with_capacity(read.len());
                for name in read {
                    for value in headers.get_all(name) {
                        only.append(name.clone(), value.clone());
                    }
                }
                only
            }),
            None => Some(headers.clone()),
        };
        // Its note, for its on-response: only when it has one.
        let (note, noted) = match self.plugin.has(super::Hook::Response) {
            true => {
                let (note, noted) = tokio::sync::oneshot::channel();
                (Some(note), Some(noted))
            }
            false => (None, None),
        };
        self.run_shadow(move |plugin, stats, values| async move {
            let headers = headers.unwrap_or_default();
            let got = plugin.on_request(&owned.view(), &headers, id).await;
            let outcome = got.map(|mut d| {
                if let Some(note) = note {
                    let _ = note.send(match &mut d {
                        RequestDecision::Proceed(p) => p.note.take(),
                        _ => None,
                    });
                }
                Outcome::of_request(&d)
            });
            stats.record(Hook::Request, owned.at(), &current, &outcome, values);
        });
        noted
    }

    /// Runs the candidate's `on-response` on what the current version was given (with the
    /// note the candidate's own `on-request` left, once it is there), on the shadow
    /// thread, and counts how its decision compares with `current`'s.
    pub fn shadow_response(
        &self,
        response: &ResponseInfo<'_>,
        (status, headers): (http::StatusCode, &HeaderMap),
        id: u64,
        noted: ShadowNote,
        current: &ResponseDecision,
    ) {
        if !self.may_shadow() {
            return;
        }
        let current = Outcome::of_response(current);
        let owned = OwnedResponse::of(response);
        let headers = headers.clone();
        self.run_shadow(move |plugin, stats, values| async move {
            // No note: the candidate's on-request failed (and was counted), so its
            // on-response is not compared.
            if let Ok(note) = noted.await {
                let got = plugin
                    .on_response(&owned.view(), status, &headers, id, note.as_deref())
                    .await
                    .map(|d| Outcome::of_response(&d));
                stats.record(Hook::Response, owned.at(), &current, &got, values);
            }
        });
    }

    /// Runs the future `call` makes on the shadow thread (given the candidate, its
    /// statistics and whether samples keep header values), its CPU counted; its place
    /// among the shadow calls in flight is freed when it ends.
    fn run_shadow<F>(
        &self,
        call: impl FnOnce(Arc<Plugin>, Arc<ShadowStats>, bool) -> F + Send + 'static,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let plugin = Arc::clone(&self.plugin);
        let stats = Arc::clone(&self.stats);
        let in_flight = Arc::clone(&self.in_flight);
        let values = self.sample_values;
        super::shadow_thread::push(move || {
            cpu_counted(Arc::clone(&stats), async move {
                call(plugin, stats, values).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
            })
        });
    }
}

/// `task`, with the CPU time of each of its polls added to the stats'. It runs on the
/// shadow thread, so reading the thread's CPU clock (a system call) costs the requests
/// nothing.
async fn cpu_counted<F: std::future::Future>(stats: Arc<ShadowStats>, task: F) -> F::Output {
    let mut task = std::pin::pin!(task);
    std::future::poll_fn(|cx| {
        let start = super::cpu_timer::thread_cpu_ns();
        let polled = task.as_mut().poll(cx);
        let used = super::cpu_timer::thread_cpu_ns().saturating_sub(start);
        stats.cpu_ns.fetch_add(used, Ordering::Relaxed);
        polled
    })
    .await
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
