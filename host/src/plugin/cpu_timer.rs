//! The deadline's backstop: a timer on each plugin-running thread's own CPU clock.
//!
//! The epoch thread wakes a call's CPU check every tick, but only when the operating
//! system runs it. On a loaded machine it can wait for a core for tens of milliseconds
//! while the call it should stop keeps one busy. So every thread that runs plugin calls
//! also has a kernel timer on its own CPU clock (`CLOCK_THREAD_CPUTIME_ID`) that fires
//! every [`INTERVAL`] of CPU that thread uses, signalling that thread itself. If a call
//! is running there, the handler brings the epoch up to date and advances it once more,
//! which makes the running call check its deadline: a call cannot run much more than its
//! timeout plus `INTERVAL` (rounded up to the kernel's scheduler tick) whether or not
//! the epoch thread is scheduled.
//!
//! The timer only counts while its thread runs; a thread busy with requests takes one
//! signal per `INTERVAL` (a few microseconds: well under 1 % of its time) and an idle
//! one takes none. Threads that never run a plugin call have no timer.
//!
//! `WEIR_PLUGIN_CPU_TIMER=0` in the environment leaves the timers out (the epoch thread
//! alone keeps deadlines): valgrind's callgrind, which `bench/profile COUNT=1` uses,
//! fails an assertion when these signals reach two threads.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::time::Duration;

/// How much CPU time a thread uses between two signals.
pub const INTERVAL: Duration = Duration::from_millis(2);

thread_local! {
    /// A plugin call is being polled on this thread (read by the signal handler).
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
    /// This thread has its timer (or was refused one): the cheap check before the
    /// thread-local that owns the timer, which has a destructor to register.
    static TIMED: Cell<bool> = const { Cell::new(false) };
    /// This thread has a working timer: a call running here is checked within
    /// [`INTERVAL`] of its CPU (rounded up to the scheduler tick) without the epoch thread.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread has a working timer (made at its first call).
pub fn armed() -> bool {
    ARMED.get()
}

/// Marks the current thread as running a call for the duration of `poll`, creating the
/// thread's timer the first time.
pub fn in_call<R>(poll: impl FnOnce() -> R) -> R {
    if !TIMED.get() {
        imp::ensure_timer();
        TIMED.set(true);
    }
    /// Clears the mark however the poll ends (a panic included).
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            IN_CALL.set(false);
        }
    }
    IN_CALL.set(true);
    let _leave = Leave;
    poll()
}

/// CPU time the current thread has used (a system call: about a microsecond).
pub fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the clock id is valid and `t` is a writable timespec.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    if !ok {
        return 0;
    }
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// What the handler does: only on a thread inside a call (elsewhere the signal means
/// nothing). Async-signal-safe: atomics, a thread-local `Cell` and the vDSO clock.
fn on_signal() {
    if IN_CALL.get() {
        super::advance_epoch_from_signal();
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::Once;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The signal the timers send: a real-time one, which nothing else in the process
    /// uses (glibc keeps the ones below `SIGRTMIN()` for itself).
    fn signal() -> libc::c_int {
        libc::SIGRTMIN() + 4
    }

    extern "C" fn handler(_: libc::c_int) {
        super::on_signal();
    }

    /// Installs the handler, once per process.
    fn install() -> bool {
        static INSTALL: Once = Once::new();
        static INSTALLED: AtomicBool = AtomicBool::new(false);
        INSTALL.call_once(|| {
            // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe and
            // restarting system calls keeps the signal invisible to the code it lands in.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handler as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let done = libc::sigaction(signal(), &action, std::ptr::null_mut()) == 0;
                INSTALLED.store(done, Ordering::Release);
            }
        });
        INSTALLED.load(Ordering::Acquire)
    }

    /// One thread's timer, deleted when the thread exits.
    struct Timer(libc::timer_t);

    impl Drop for Timer {
        fn drop(&mut self) {
            // SAFETY: the id came from timer_create and is deleted once.
            unsafe { libc::timer_delete(self.0) };
        }
    }

    thread_local! {
        static TIMER: std::cell::OnceCell<Option<Timer>> = const { std::cell::OnceCell::new() };
    }

    pub fn ensure_timer() {
        if !wanted() {
            return;
        }
        let armed = TIMER.with(|t| t.get_or_init(create).is_some());
        super::ARMED.set(armed);
    }

    /// Whether the environment leaves the timers in (read once).
    fn wanted() -> bool {
        static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *WANTED.get_or_init(|| wanted_by(std::env::var_os("WEIR_PLUGIN_CPU_TIMER")))
    }

    /// Timers unless the variable says `0`.
    pub(super) fn wanted_by(var: Option<std::ffi::OsString>) -> bool {
        var.is_none_or(|v| v != "0")
    }

    /// A periodic timer on the calling thread's CPU clock that signals the calling
    /// thread. Without one (the kernel refused), the epoch thread alone keeps deadlines.
    fn create() -> Option<Timer> {
        if !install() {
            tracing::warn!("cannot install the plugin deadline signal handler");
            return None;
        }
        let every = libc::timespec {
            tv_sec: 0,
            tv_nsec: super::INTERVAL.as_nanos() as libc::c_long,
        };
        // SAFETY: plain system calls on values built here; the timer id is written by
        // timer_create before it is used.
        unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = signal();
            event.sigev_notify_thread_id = libc::gettid();
            let mut id: libc::timer_t = std::mem::zeroed();
            if libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut event, &mut id) != 0 {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "cannot create a plugin deadline timer; deadlines rely on the epoch thread alone"
                );
                return None;
            }
            let spec = libc::itimerspec {
                it_interval: every,
                it_value: every,
            };
            if libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) != 0 {
                libc::timer_delete(id);
                return None;
            }
            Some(Timer(id))
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    /// Elsewhere, the epoch thread alone keeps deadlines.
    pub fn ensure_timer() {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn only_a_zero_leaves_the_timers_out() {
        assert!(super::imp::wanted_by(None));
        assert!(super::imp::wanted_by(Some("1".into())));
        assert!(super::imp::wanted_by(Some("".into())));
        assert!(!super::imp::wanted_by(Some("0".into())));
    }
}
