//! The process's wasmtime engine and what bounds every call into it: the epoch ticker
//! (1 ms, asleep while no call needs it), the CPU meter that charges a call for the CPU it
//! used (backed by a CPU timer on each thread that runs calls, in `cpu_timer`), the
//! linker of weir's imports and WASI (which grants nothing), and the compile cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::cpu_timer::{self, thread_cpu_ns};
use super::{LoadError, bindings, validate};
use crate::state::PluginState;
use crate::upstream::BackendRt;

/// One epoch tick: how soon a call is first checked against its deadline.
pub const TICK: Duration = Duration::from_millis(1);
/// How long a call that has run past its first check may hold a worker thread before it
/// yields to the tasks queued behind it (and is checked again). While such a call runs,
/// the epoch advances at this pace instead of [`TICK`]'s.
pub const LONG_CALL_SLICE: Duration = Duration::from_micros(100);

/// Calls running now that have passed their first check.
static LONG_CALLS: AtomicUsize = AtomicUsize::new(0);
/// Calls running now past their first deadline check (while there are any, the epoch
/// advances every [`LONG_CALL_SLICE`]).
pub fn calls_running_long() -> usize {
    LONG_CALLS.load(Ordering::Acquire)
}

/// The thread that advances the epoch, woken when a call starts running long, and when
/// a call that needs it starts while it sleeps ([`call_starting`]).
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();
/// Calls started since the process began that need the epoch thread (all but quiet ones,
/// [`call_starting`]): it sleeps once this has not moved for [`TICKER_IDLE`] (and no call
/// runs long), and is woken by the next such call.
static CALLS_STARTED: AtomicU64 = AtomicU64::new(0);
/// The epoch thread is asleep, or about to be, until a call starts.
static TICKER_ASLEEP: AtomicBool = AtomicBool::new(false);
/// How long the epoch thread goes on ticking after the last call started: an idle
/// process wakes for nothing.
const TICKER_IDLE: Duration = Duration::from_secs(1);

/// The shortest timeout for which a call on the caller's stack leaves the epoch thread
/// asleep ([`call_starting`]). Such a call is first checked by its thread's CPU timer
/// instead: at the timer's next signal, or the one after if the call had then used less
/// than a tick (each comes after [`cpu_timer::INTERVAL`] of the thread's CPU, rounded up
/// to the scheduler tick: within about 5 ms of the call's CPU at 250 Hz), and every
/// [`LONG_CALL_SLICE`] after that. A shorter timeout keeps the epoch thread's first check
/// at one tick.
pub const QUIET_MIN_TIMEOUT: Duration = Duration::from_millis(10);

/// A call is about to start on a store whose deadline is set from the epoch: wakes the
/// epoch thread if it sleeps, and counts the call so that it does not fall asleep.
/// The count and the flag are sequentially consistent on both sides, so the epoch thread
/// either sees this call before it sleeps or is woken by it (a wake-up given before it
/// parks is kept for the park).
///
/// Except for a `quiet` call: one on the caller's stack whose timeout is at least
/// [`QUIET_MIN_TIMEOUT`], on a thread with a CPU timer, which checks it without the
/// epoch thread. While all calls are quiet, the epoch thread sleeps: its wake-ups every
/// tick cost a busy core two context switches each, 5-9 % of the CPU per request with
/// three plugins (BENCHMARKS.md). Whether the call is quiet.
pub(super) fn call_starting(quiet: bool) -> bool {
    if quiet && cpu_timer::armed() {
        return true;
    }
    CALLS_STARTED.fetch_add(1, Ordering::SeqCst);
    if TICKER_ASLEEP.load(Ordering::SeqCst)
        && let Some(ticker) = TICKER.get()
    {
        ticker.unpark();
    }
    false
}

/// Readies a store for a call made while loading a plugin (instantiation, configure, the
/// declarations), which may take longer than a hook: 1 s of CPU.
pub(super) fn arm_for_load(store: &mut Store<StoreState>, meter: &CpuMeter) {
    meter.start(Duration::from_secs(1));
    call_starting(false);
    store.set_epoch_deadline(1000);
}

/// Whether the epoch thread sleeps (no call has started for [`TICKER_IDLE`]).
#[doc(hidden)]
pub fn epoch_thread_asleep() -> bool {
    TICKER_ASLEEP.load(Ordering::SeqCst)
}
/// The ticks of real time the ticker has counted into the engine's epoch (it starts at 0
/// with the engine). The epoch also advances between them while calls run long.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Ticks of real time since the engine started: what the epoch should be now.
pub(super) fn ticks_since_start() -> u64 {
    ticks_at(std::time::Instant::now())
}

/// Ticks of real time from the engine's start to `now`.
pub(super) fn ticks_at(now: std::time::Instant) -> u64 {
    static STARTED: OnceLock<std::time::Instant> = OnceLock::new();
    (now.saturating_duration_since(*STARTED.get_or_init(std::time::Instant::now))
        .as_micros()
        / TICK.as_micros()) as u64
}

/// How old a thread's CPU clock sample may be when a call starts.
const CPU_SAMPLE_AGE: Duration = Duration::from_micros(250);

thread_local! {
    /// The thread's last CPU clock reading, and when it was taken.
    static CPU_SAMPLE: std::cell::Cell<Option<(std::time::Instant, u64)>> =
        const { std::cell::Cell::new(None) };
}

/// The thread's CPU clock, read at most every [`CPU_SAMPLE_AGE`]: in between, the last
/// reading plus the wall time since, as if the thread had run all along. Never below the
/// true value and at most `CPU_SAMPLE_AGE` above it, so a call measured from here is
/// charged at most its true CPU time, and a call costs no system call. `now` is the
/// current time, read by the caller.
pub(super) fn thread_cpu_at_least_ns(now: std::time::Instant) -> u64 {
    CPU_SAMPLE.with(
        |sample| match sample.get().map(|(at, cpu)| (now.duration_since(at), cpu)) {
            Some((since, cpu)) if since < CPU_SAMPLE_AGE => cpu + since.as_nanos() as u64,
            _ => {
                let cpu = thread_cpu_ns();
                sample.set(Some((now, cpu)));
                cpu
            }
        },
    )
}

/// The CPU time one call into an instance has used, summed over the polls of its future
/// (which may run on different threads). The epoch only wakes the check: a call is
/// stopped for the CPU it used, never for time it spent waiting for a core on a busy
/// machine. The thread's CPU clock is read exactly only in that check and when a call
/// yields; a call's start uses [`thread_cpu_at_least_ns`], which may let a runaway
/// call go on for up to [`CPU_SAMPLE_AGE`] past its timeout, never stop one early.
#[derive(Default)]
pub(super) struct CpuMeter {
    pub(super) used_ns: AtomicU64,
    /// The current call has passed its first check (and counts in [`LONG_CALLS`]).
    pub(super) long: AtomicBool,
    /// The thread's CPU clock when the current poll began.
    pub(super) poll_start_ns: AtomicU64,
    pub(super) limit_ns: AtomicU64,
    /// The CPU time the call had used when the check stopped it.
    pub(super) stopped_at_ns: AtomicU64,
    /// The current call runs on the caller's stack ([`Self::at_once`]): it cannot yield.
    pub(super) on_stack: AtomicBool,
    /// A call on the caller's stack used a tick of CPU or more: it held its thread.
    pub(super) held_thread: AtomicBool,
}

impl CpuMeter {
    pub(super) fn start(&self, limit: Duration) {
        self.used_ns.store(0, Ordering::Relaxed);
        self.limit_ns
            .store(limit.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Used so far; called from within a poll, on its thread.
    pub(super) fn used_now(&self) -> u64 {
        let this_poll = thread_cpu_ns().saturating_sub(self.poll_start_ns.load(Ordering::Relaxed));
        self.used_ns.load(Ordering::Relaxed) + this_poll
    }

    /// What the epoch callback decides, once per tick of a call that runs that long:
    /// stop the call, or let the thread serve other tasks before going on. A long call
    /// thus never holds a worker thread for more than a tick, and the tasks queued on it
    /// (some of which no other worker may take) wait at most that long. The time
    /// yielded is not charged ([`Self::metered`]).
    pub(super) fn check(&self) -> wasmtime::UpdateDeadline {
        let (used, limit) = (self.used_now(), self.limit_ns.load(Ordering::Relaxed));
        if used >= limit {
            self.stopped_at_ns.store(used, Ordering::Relaxed);
            return wasmtime::UpdateDeadline::Interrupt;
        }
        if self.on_stack.load(Ordering::Relaxed) {
            // It cannot yield: it goes on to its end or its deadline, checked every
            // slice once it has used a tick. (A CPU timer's signal can wake the check of
            // a call just begun: only the CPU it used says whether it held the thread.)
            if used >= TICK.as_nanos() as u64 {
                self.held_thread.store(true, Ordering::Relaxed);
                self.runs_long();
            }
            return wasmtime::UpdateDeadline::Continue(1);
        }
        self.runs_long();
        // tokio's own yield: a task that woke itself would be polled again before the
        // runtime looks for I/O (a single-threaded runtime polls for it only every 61
        // polls, or once nothing is ready), so the requests waiting on a socket would not
        // get the thread after all. A task yielding this way runs again after that poll.
        wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
    }

    /// From now on the epoch advances every slice, so that this call is checked (and, on
    /// a fiber, yields) often; wakes the epoch thread if it sleeps.
    fn runs_long(&self) {
        if !self.long.swap(true, Ordering::Relaxed) {
            LONG_CALLS.fetch_add(1, Ordering::AcqRel);
            if let Some(ticker) = TICKER.get() {
                ticker.unpark();
            }
        }
    }

    /// The call is over (done, stopped, or dropped mid-way).
    pub(super) fn finish(&self) {
        if self.long.swap(false, Ordering::Relaxed) {
            LONG_CALLS.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Runs `call` (a synchronous call into the instance) on this thread's stack, metering
    /// its CPU time as [`Self::metered`] does; `now` as there. Whether it held the
    /// thread for a tick or more.
    pub(super) fn at_once<R>(
        &self,
        now: std::time::Instant,
        call: impl FnOnce() -> R,
    ) -> (R, bool) {
        self.poll_start_ns
            .store(thread_cpu_at_least_ns(now), Ordering::Relaxed);
        self.on_stack.store(true, Ordering::Relaxed);
        let r = {
            let _finish = Finish(self);
            cpu_timer::in_call(call)
        };
        self.on_stack.store(false, Ordering::Relaxed);
        (r, self.held_thread.swap(false, Ordering::Relaxed))
    }

    /// Runs `call` (a future driving the instance), metering the CPU time of each poll.
    /// The caller pins it where it stands: moving the future of a call here would copy it.
    /// `now` stands for the time of the first poll: read by the caller just before, it
    /// saves a clock reading per call, and charges the call for the little the caller did
    /// in between (taking the instance from the pool). Later polls read the clock.
    pub(super) async fn metered<F: std::future::Future>(
        &self,
        now: std::time::Instant,
        mut call: std::pin::Pin<&mut F>,
    ) -> F::Output {
        let _finish = Finish(self);
        let mut first = Some(now);
        std::future::poll_fn(|cx| {
            let now = first.take().unwrap_or_else(std::time::Instant::now);
            let start = thread_cpu_at_least_ns(now);
            self.poll_start_ns.store(start, Ordering::Relaxed);
            let r = cpu_timer::in_call(|| call.as_mut().poll(cx));
            if r.is_pending() {
                // The next poll may run on another thread: keep what this one used.
                self.used_ns
                    .fetch_add(thread_cpu_ns().saturating_sub(start), Ordering::Relaxed);
            }
            r
        })
        .await
    }
}

/// Ends the meter's call however the call ends (a panic included).
struct Finish<'a>(&'a CpuMeter);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The process's engine, once created.
static ENGINE: OnceLock<Engine> = OnceLock::new();

/// Brings the epoch up to real time (a late ticker, a busy machine): one increment per
/// tick missed, each claimed on [`EPOCH`] so that the ticker and the CPU timers'
/// signal handlers ([`cpu_timer`]) never count a tick twice. Whether it advanced.
pub(super) fn catch_up(engine: &Engine) -> bool {
    if TICKER_ASLEEP.load(Ordering::SeqCst) {
        // The ticks of an idle sleep are skipped, not counted (see `engine`).
        return false;
    }
    let due = ticks_since_start();
    let mut seen = EPOCH.load(Ordering::Acquire);
    let mut advanced = false;
    while seen < due {
        match EPOCH.compare_exchange_weak(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                engine.increment_epoch();
                seen += 1;
                advanced = true;
            }
            Err(now) => seen = now,
        }
    }
    advanced
}

/// From a CPU timer's signal, on a thread in the middle of a call: the epoch up to
/// date and one more, so that the running call checks its deadline now.
pub(super) fn advance_epoch_from_signal() {
    if let Some(engine) = ENGINE.get() {
        catch_up(engine);
        engine.increment_epoch();
    }
}

/// Stops the epoch thread from advancing the epoch (true) or lets it go on (false).
/// For tests of the deadline's backstop, which must hold without that thread.
#[doc(hidden)]
pub fn stall_epoch_thread(stalled: bool) {
    TICKER_STALLED.store(stalled, Ordering::Release);
}
static TICKER_STALLED: AtomicBool = AtomicBool::new(false);

/// The process's engine, and the thread that advances its epoch.
pub(super) fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| {
        // For profiling under valgrind, which cannot map the address space reserved for
        // 2,000 memories of up to 256 MiB: `WEIR_PLUGIN_INSTANCES` sets a smaller pool.
        let instances = std::env::var("WEIR_PLUGIN_INSTANCES")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(2_000);
        let mut pooling = wasmtime::PoolingAllocationConfig::default();
        pooling
            .total_component_instances(instances)
            .total_memories(instances)
            .total_tables(instances)
            .total_core_instances(instances.saturating_mul(5))
            .max_memory_size(validate::MAX_MEMORY as usize);
        ticks_since_start();
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .memory_reservation(validate::MAX_MEMORY)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
        // For profiling plugins: perf can then name the functions of compiled components.
        if std::env::var_os("WEIR_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).expect("a valid engine configuration");
        let ticking = engine.weak();
        let ticker = std::thread::Builder::new()
            .name("weir-plugin-epoch".into())
            .spawn(move || {
                // The epoch follows the clock, not the count of wake-ups: a late wake-up
                // (a busy machine) catches up, so a deadline holds to about one tick.
                // While calls run long, it also advances every slice between ticks.
                let (mut seen, mut idle_since) = (0, std::time::Instant::now());
                while let Some(engine) = ticking.upgrade() {
                    let long = LONG_CALLS.load(Ordering::Acquire) > 0;
                    if !TICKER_STALLED.load(Ordering::Acquire) && !catch_up(&engine) && long {
                        engine.increment_epoch();
                    }
                    drop(engine);
                    let started = CALLS_STARTED.load(Ordering::SeqCst);
                    if started != seen || long {
                        (seen, idle_since) = (started, std::time::Instant::now());
                    } else if idle_since.elapsed() >= TICKER_IDLE {
                        // No call for a while: sleep until one starts (`call_starting`).
                        TICKER_ASLEEP.store(true, Ordering::SeqCst);
                        if CALLS_STARTED.load(Ordering::SeqCst) == seen {
                            std::thread::park();
                        }
                        // The ticks slept through are skipped rather than counted one by
                        // one: no call was running, and calls that started meanwhile set
                        // their deadlines without a lag (`deadline_ticks`). Skipped
                        // before the flag goes, so a call that sees it gone sees the
                        // epoch up to date.
                        EPOCH.fetch_max(ticks_since_start(), Ordering::SeqCst);
                        TICKER_ASLEEP.store(false, Ordering::SeqCst);
                        idle_since = std::time::Instant::now();
                        continue;
                    }
                    std::thread::park_timeout(if long { LONG_CALL_SLICE } else { TICK });
                }
            })
            .expect("spawn the epoch thread");
        let _ = TICKER.set(ticker.thread().clone());
        engine
    })
}

/// The linker of a plugin's instances. `waits`: for instances called on fibers, whose
/// imports may wait (counters and kv for Redis, WASI's functions for a clock): they are
/// asynchronous. Otherwise: for instances called on the caller's stack
/// (`Plugin::sync_calls`), whose imports all answer at once ([`at_once`]).
pub(super) fn linker(waits: bool) -> &'static Linker<StoreState> {
    static WAITING: OnceLock<Linker<StoreState>> = OnceLock::new();
    static AT_ONCE: OnceLock<Linker<StoreState>> = OnceLock::new();
    let build = move || {
        let mut linker = Linker::new(engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI links");
        bindings::Plugin::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .expect("weir imports link");
        if !waits {
            linker.allow_shadowing(true);
            at_once::link(&mut linker).expect("the imports that answer at once link");
            linker.allow_shadowing(false);
        }
        linker
    };
    if waits {
        WAITING.get_or_init(build)
    } else {
        AT_ONCE.get_or_init(build)
    }
}

/// A call on the caller's stack came to a wait (a pollable of a clock the plugin
/// subscribed to, or Redis): it stops there, and is made again from the start on a fiber.
#[derive(Debug, thiserror::Error)]
#[error("a plugin call on the caller's stack came to a wait")]
pub(super) struct WouldWait;

/// The imports that answer at once, for instances called on the caller's stack: weir's
/// counters and kv, and WASI's functions that could wait, each polled once. In the
/// sandbox only a clock's pollable waits (its streams are a sink and a closed input), and
/// the store only when a reload has put Redis in use; a call that comes to a wait stops
/// with [`WouldWait`].
mod at_once {
    use std::future::Future;
    use std::time::Duration;

    use wasmtime::StoreContextMut;
    use wasmtime::component::{Linker, Resource, ResourceType, WasmStr};
    use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamResult};
    use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable};
    use wasmtime_wasi_io::bindings::wasi::io::streams::{
        self as wit, Host as _, HostInputStream, HostOutputStream,
    };

    use super::{StoreState, WouldWait};
    use crate::plugin::bindings::weir::plugin::counters::Sliding;

    /// The interfaces as wasmtime-wasi's linker names them.
    const STREAMS: &str = "wasi:io/streams@0.2.12";
    const POLL: &str = "wasi:io/poll@0.2.12";
    const COUNTERS: &str = "weir:plugin/counters@0.1.0";
    const KV: &str = "weir:plugin/kv@0.1.0";

    type Cx<'a> = StoreContextMut<'a, StoreState>;

    /// The outcome of a function that could wait, polled once: ready at once, or the
    /// call stops with [`WouldWait`] rather than hold the thread.
    fn now<T>(f: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
        let mut f = std::pin::pin!(f);
        match f
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => Err(WouldWait.into()),
        }
    }

    /// A stream function's outcome as the guest takes it.
    fn stream<T>(
        cx: &mut Cx<'_>,
        f: impl FnOnce(&mut wasmtime::component::ResourceTable) -> StreamResult<T>,
    ) -> wasmtime::Result<(Result<T, wit::StreamError>,)> {
        let table = &mut cx.data_mut().table;
        Ok((match f(table) {
            Ok(v) => Ok(v),
            Err(e) => Err(table.convert_stream_error(e)?),
        },))
    }

    /// A stream function that could wait, polled once.
    fn stream_now<T>(f: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
        now(async { Ok(f.await) }).unwrap_or_else(|e| Err(wasmtime_wasi::p2::StreamError::Trap(e)))
    }

    pub(super) fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        let mut poll = linker.instance(POLL)?;
        poll.func_wrap(
            "[method]pollable.block",
            |mut cx: Cx<'_>, (p,): (Resource<DynPollable>,)| {
                now(HostPollable::block(&mut cx.data_mut().table, p))
            },
        )?;
        poll.func_wrap(
            "poll",
            |mut cx: Cx<'_>, (list,): (Vec<Resource<DynPollable>>,)| {
                Ok((now(cx.data_mut().table.poll(list))?,))
            },
        )?;

        let mut streams = linker.instance(STREAMS)?;
        streams.resource(
            "output-stream",
            ResourceType::host::<DynOutputStream>(),
            |mut cx, rep| {
                now(HostOutputStream::drop(
                    &mut cx.data_mut().table,
                    Resource::new_own(rep),
                ))
            },
        )?;
        streams.resource(
            "input-stream",
            ResourceType::host::<DynInputStream>(),
            |mut cx, rep| {
                now(HostInputStream::drop(
                    &mut cx.data_mut().table,
                    Resource::new_own(rep),
                ))
            },
        )?;
        streams.func_wrap(
            "[method]output-stream.blocking-flush",
            |mut cx: Cx<'_>, (s,): (Resource<DynOutputStream>,)| {
                stream(&mut cx, |t| stream_now(t.blocking_flush(s)))
            },
        )?;
        streams.func_wrap(
            "[method]output-stream.blocking-write-and-flush",
            |mut cx: Cx<'_>, (s, bytes): (Resource<DynOutputStream>, Vec<u8>)| {
                stream(&mut cx, |t| {
                    stream_now(t.blocking_write_and_flush(s, bytes))
                })
            },
        )?;
        streams.func_wrap(
            "[method]output-stream.blocking-write-zeroes-and-flush",
            |mut cx: Cx<'_>, (s, len): (Resource<DynOutputStream>, u64)| {
                stream(&mut cx, |t| {
                    stream_now(t.blocking_write_zeroes_and_flush(s, len))
                })
            },
        )?;
        streams.func_wrap(
            "[method]output-stream.blocking-splice",
            |mut cx: Cx<'_>,
             (s, from, len): (Resource<DynOutputStream>, Resource<DynInputStream>, u64)| {
                stream(&mut cx, |t| stream_now(t.blocking_splice(s, from, len)))
            },
        )?;
        streams.func_wrap(
            "[method]input-stream.blocking-read",
            |mut cx: Cx<'_>, (s, len): (Resource<DynInputStream>, u64)| {
                stream(&mut cx, |t| stream_now(t.blocking_read(s, len)))
            },
        )?;
        streams.func_wrap(
            "[method]input-stream.blocking-skip",
            |mut cx: Cx<'_>, (s, len): (Resource<DynInputStream>, u64)| {
                stream(&mut cx, |t| stream_now(t.blocking_skip(s, len)))
            },
        )?;

        // weir's own store, polled once: the memory store answers at once. One that would
        // wait for Redis (a reload has put it in use; this generation is on its way out)
        // stops the call like a clock does, to be made again on a fiber. The keys are
        // read where the guest left them: no copy of their own.
        let mut counters = linker.instance(COUNTERS)?;
        counters.func_wrap(
            "add",
            |cx: Cx<'_>, (key, delta, window_ms): (WasmStr, i64, u64)| {
                let key = key.to_str(&cx)?;
                let window = Duration::from_millis(window_ms);
                let state = &cx.data().state;
                Ok((now(async {
                    Ok(state.counter_add(&key, delta, window).await?)
                })?,))
            },
        )?;
        counters.func_wrap(
            "add-sliding",
            |cx: Cx<'_>, (key, delta, window_ms, limit): (WasmStr, i64, u64, Option<i64>)| {
                let key = key.to_str(&cx)?;
                let state = &cx.data().state;
                let c = now(async { Ok(state.sliding_add(&key, delta, window_ms, limit).await?) })?;
                Ok((Sliding::from(c),))
            },
        )?;
        let mut kv = linker.instance(KV)?;
        kv.func_wrap("get", |cx: Cx<'_>, (key,): (WasmStr,)| {
            let key = key.to_str(&cx)?;
            let state = &cx.data().state;
            Ok((now(async { Ok(state.kv_get(&key).await?) })?,))
        })?;
        kv.func_wrap(
            "set",
            |cx: Cx<'_>, (key, value, ttl_ms): (WasmStr, Vec<u8>, Option<u64>)| {
                let key = key.to_str(&cx)?;
                let ttl = ttl_ms.map(Duration::from_millis);
                let state = &cx.data().state;
                Ok((now(async { Ok(state.kv_set(&key, &value, ttl).await?) })?,))
            },
        )?;
        kv.func_wrap("delete", |cx: Cx<'_>, (key,): (WasmStr,)| {
            let key = key.to_str(&cx)?;
            let state = &cx.data().state;
            now(async { Ok(state.kv_delete(&key).await?) })
        })?;
        Ok(())
    }
}

/// Compiles a component, or takes it from the process's cache of compiled components
/// (by SHA-256), so a reload does not recompile the plugins that did not change.
///
/// Compiling takes a fraction of a second per plugin, all of it CPU: it runs on a thread
/// of tokio's blocking pool, not on the runtime's, which with `threads = 1` is the one
/// thread every connection is served on (a reload that added plugins held every request
/// until they were compiled). A panic in the compiler refuses the component, as a
/// compile error does.
pub(super) async fn compile(bytes: &[u8], sha256: &str) -> Result<Component, LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::Component(
            "not WebAssembly (a component begins with the bytes \\0asm)".into(),
        ));
    }
    static CACHE: OnceLock<Mutex<HashMap<String, Component>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(sha256) {
        return Ok(c.clone());
    }
    let bytes = bytes.to_vec();
    let component = tokio::task::spawn_blocking(move || Component::from_binary(engine(), &bytes))
        .await
        .map_err(|e| LoadError::Component(format!("compiling failed: {e}")))?
        .map_err(|e| LoadError::Component(format!("{e:#}")))?;
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 256 {
        cache.clear();
    }
    cache.insert(sha256.to_owned(), component.clone());
    Ok(component)
}

/// What an instance's store holds: WASI (granting nothing), its memory cap, and the
/// host state its imports reach.
pub struct StoreState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) plugin: Arc<str>,
    pub(super) state: Arc<PluginState>,
    pub(super) backends: Arc<[Arc<BackendRt>]>,
    pub(super) meter: Arc<CpuMeter>,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// WASI that grants nothing: no files, environment, arguments, sockets or stdin; what a
/// plugin prints is discarded (plugins log through the `log` import).
pub(super) fn sandbox() -> WasiCtx {
    use wasmtime_wasi::p2::pipe::{ClosedInputStream, SinkOutputStream};
    let mut builder = WasiCtx::builder();
    builder
        .stdin(ClosedInputStream)
        .stdout(SinkOutputStream)
        .stderr(SinkOutputStream);
    builder.build()
}

/// When the epoch first wakes the CPU check of a call, in ticks beyond the engine's
/// current epoch: one full tick into the call (the current tick is partly over, so
/// one more; and when the ticker runs late, a busy machine, the epoch lags real time,
/// so the lag is added). From then on the check runs every tick ([`CpuMeter::check`]);
/// calls of the usual few microseconds never reach it. A `quiet` call
/// ([`call_starting`]): the next advance, whoever makes it (the ticker may sleep, or
/// fall asleep during the call, leaving the advances to the thread's CPU timer).
pub(super) fn deadline_ticks(now: std::time::Instant, quiet: bool) -> u64 {
    if quiet {
        return 1;
    }
    if TICKER_ASLEEP.load(Ordering::SeqCst) {
        // The ticker, woken by this call, skips the ticks it slept through.
        return 2;
    }
    let lag = ticks_at(now).saturating_sub(EPOCH.load(Ordering::SeqCst));
    2 + lag
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns this thread's CPU for `ms` milliseconds.
    fn spin(ms: u64) {
        let start = thread_cpu_ns();
        let wall = std::time::Instant::now();
        while thread_cpu_ns() - start < ms * 1_000_000 && wall.elapsed() < Duration::from_secs(5) {
            std::hint::spin_loop();
        }
    }

    #[tokio::test]
    async fn a_call_is_charged_for_cpu_not_for_waiting() {
        let meter = CpuMeter::default();
        meter.start(Duration::from_millis(10));
        meter
            .metered(
                std::time::Instant::now(),
                std::pin::pin!(async {
                    // Waiting (here: for a timer; on a busy machine: for a core) is free.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    spin(4);
                    assert!(matches!(
                        meter.check(),
                        wasmtime::UpdateDeadline::YieldCustom(1, _)
                    ));
                    tokio::task::yield_now().await;
                    // CPU adds up across polls.
                    spin(7);
                    assert!(matches!(meter.check(), wasmtime::UpdateDeadline::Interrupt));
                }),
            )
            .await;
        meter.start(Duration::from_millis(10));
        assert!(meter.used_ns.load(Ordering::Relaxed) == 0);
    }
}
