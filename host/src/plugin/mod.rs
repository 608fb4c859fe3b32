//! The plugin runtime: WebAssembly components against the `weir:plugin` world.
//!
//! One wasmtime engine for the process (pooling allocator, epoch interruption, a 1 ms
//! epoch ticker that sleeps while no call starts, backed by a CPU timer on each thread
//! that runs calls, in `cpu_timer`).
//! Each configured plugin is compiled and pre-instantiated once; a pool of configured
//! instances serves its hook calls. Every call has a CPU deadline (the
//! plugin's `timeout` of the thread's CPU time, enforced to within one tick; time spent
//! waiting for a core does not count) and every instance a memory cap; an
//! instance whose call failed in any way is dropped, never reused. WASI grants nothing:
//! no files, environment, arguments or sockets.

mod cpu_timer;
mod host;
pub mod validate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::{FailPolicy, PluginConfig, PluginSource};
use crate::state::PluginState;
use crate::upstream::BackendRt;

pub use bindings::weir::plugin::types;

#[allow(clippy::all)]
mod bindings {
    // Exports are called asynchronously, so that WASI's stream functions (a plugin that
    // prints or panics) never block a tokio worker; weir's own imports stay synchronous.
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        exports: { default: async },
        // Records passed into a hook borrow their strings (`RequestParam<'a>` and the
        // like): the request's fields go to the sandbox without being copied twice.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

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
/// a call starts while it sleeps.
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();
/// Calls started since the process began: the epoch thread sleeps once this has not
/// moved for [`TICKER_IDLE`] (and no call runs long), and is woken by the next call.
static CALLS_STARTED: AtomicU64 = AtomicU64::new(0);
/// The epoch thread is asleep, or about to be, until a call starts.
static TICKER_ASLEEP: AtomicBool = AtomicBool::new(false);
/// How long the epoch thread goes on ticking after the last call started: an idle
/// process wakes for nothing.
const TICKER_IDLE: Duration = Duration::from_secs(1);

/// A call is about to start on a store whose deadline is set from the epoch: wakes the
/// epoch thread if it sleeps. The count and the flag are sequentially consistent on
/// both sides, so the epoch thread either sees this call before it sleeps or is woken
/// by it (a wake-up given before it parks is kept for the park).
fn call_starting() {
    CALLS_STARTED.fetch_add(1, Ordering::SeqCst);
    if TICKER_ASLEEP.load(Ordering::SeqCst)
        && let Some(ticker) = TICKER.get()
    {
        ticker.unpark();
    }
}

/// Readies a store for a call made while loading a plugin (instantiation, configure, the
/// declarations), which may take longer than a hook: 1 s of CPU.
fn arm_for_load(store: &mut Store<StoreState>, meter: &CpuMeter) {
    meter.start(Duration::from_secs(1));
    call_starting();
    store.set_epoch_deadline(1000);
}

/// Whether the epoch thread sleeps (no call has started for [`TICKER_IDLE`]).
#[doc(hidden)]
pub fn epoch_thread_asleep() -> bool {
    TICKER_ASLEEP.load(Ordering::SeqCst)
}
/// Instances kept ready per plugin.
const POOL_MAX: usize = 64;

/// The ticks of real time the ticker has counted into the engine's epoch (it starts at 0
/// with the engine). The epoch also advances between them while calls run long.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Ticks of real time since the engine started: what the epoch should be now.
fn ticks_since_start() -> u64 {
    ticks_at(std::time::Instant::now())
}

/// Ticks of real time from the engine's start to `now`.
fn ticks_at(now: std::time::Instant) -> u64 {
    static STARTED: OnceLock<std::time::Instant> = OnceLock::new();
    (now.saturating_duration_since(*STARTED.get_or_init(std::time::Instant::now))
        .as_micros()
        / TICK.as_micros()) as u64
}

use cpu_timer::thread_cpu_ns;

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
fn thread_cpu_at_least_ns(now: std::time::Instant) -> u64 {
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
struct CpuMeter {
    used_ns: AtomicU64,
    /// The current call has passed its first check (and counts in [`LONG_CALLS`]).
    long: AtomicBool,
    /// The thread's CPU clock when the current poll began.
    poll_start_ns: AtomicU64,
    limit_ns: AtomicU64,
    /// The CPU time the call had used when the check stopped it.
    stopped_at_ns: AtomicU64,
}

impl CpuMeter {
    fn start(&self, limit: Duration) {
        self.used_ns.store(0, Ordering::Relaxed);
        self.limit_ns
            .store(limit.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Used so far; called from within a poll, on its thread.
    fn used_now(&self) -> u64 {
        let this_poll = thread_cpu_ns().saturating_sub(self.poll_start_ns.load(Ordering::Relaxed));
        self.used_ns.load(Ordering::Relaxed) + this_poll
    }

    /// What the epoch callback decides, once per tick of a call that runs that long:
    /// stop the call, or let the thread serve other tasks before going on. A long call
    /// thus never holds a worker thread for more than a tick, and the tasks queued on it
    /// (some of which no other worker may take) wait at most that long. The time
    /// yielded is not charged ([`Self::metered`]).
    fn check(&self) -> wasmtime::UpdateDeadline {
        let (used, limit) = (self.used_now(), self.limit_ns.load(Ordering::Relaxed));
        if used >= limit {
            self.stopped_at_ns.store(used, Ordering::Relaxed);
            return wasmtime::UpdateDeadline::Interrupt;
        }
        if !self.long.swap(true, Ordering::Relaxed) {
            // From now on the epoch advances every slice, so that this call yields often.
            LONG_CALLS.fetch_add(1, Ordering::AcqRel);
            if let Some(ticker) = TICKER.get() {
                ticker.unpark();
            }
        }
        // tokio's own yield: a task that woke itself would be polled again before the
        // runtime looks for I/O (a single-threaded runtime polls for it only every 61
        // polls, or once nothing is ready), so the requests waiting on a socket would not
        // get the thread after all. A task yielding this way runs again after that poll.
        wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
    }

    /// The call is over (done, stopped, or dropped mid-way).
    fn finish(&self) {
        if self.long.swap(false, Ordering::Relaxed) {
            LONG_CALLS.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Runs `call` (a future driving the instance), metering the CPU time of each poll.
    /// The caller pins it where it stands: moving the future of a call here would copy it.
    /// `now` stands for the time of the first poll: read by the caller just before, it
    /// saves a clock reading per call, and charges the call for the little the caller did
    /// in between (taking the instance from the pool). Later polls read the clock.
    async fn metered<F: std::future::Future>(
        &self,
        now: std::time::Instant,
        mut call: std::pin::Pin<&mut F>,
    ) -> F::Output {
        struct Finish<'a>(&'a CpuMeter);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
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

/// The process's engine, once created.
static ENGINE: OnceLock<Engine> = OnceLock::new();

/// Brings the epoch up to real time (a late ticker, a busy machine): one increment per
/// tick missed, each claimed on [`EPOCH`] so that the ticker and the CPU timers'
/// signal handlers ([`cpu_timer`]) never count a tick twice. Whether it advanced.
fn catch_up(engine: &Engine) -> bool {
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
fn advance_epoch_from_signal() {
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
fn engine() -> &'static Engine {
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

fn linker() -> &'static Linker<StoreState> {
    static LINKER: OnceLock<Linker<StoreState>> = OnceLock::new();
    LINKER.get_or_init(|| {
        let mut linker = Linker::new(engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI links");
        bindings::Plugin::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .expect("weir imports link");
        linker
    })
}

/// Compiles a component, or takes it from the process's cache of compiled components
/// (by SHA-256), so a reload does not recompile the plugins that did not change.
///
/// Compiling takes a fraction of a second per plugin, all of it CPU: it runs on a thread
/// of tokio's blocking pool, not on the runtime's, which with `threads = 1` is the one
/// thread every connection is served on (a reload that added plugins held every request
/// until they were compiled). A panic in the compiler refuses the component, as a
/// compile error does.
async fn compile(bytes: &[u8], sha256: &str) -> Result<Component, LoadError> {
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
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: Arc<str>,
    state: Arc<PluginState>,
    backends: Arc<[Arc<BackendRt>]>,
    meter: Arc<CpuMeter>,
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
fn sandbox() -> WasiCtx {
    use wasmtime_wasi::p2::pipe::{ClosedInputStream, SinkOutputStream};
    let mut builder = WasiCtx::builder();
    builder
        .stdin(ClosedInputStream)
        .stdout(SinkOutputStream)
        .stderr(SinkOutputStream);
    builder.build()
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("sha256 mismatch: the component has {actual}, the config pins {expected}")]
    Sha256 { expected: String, actual: String },
    #[error("not a weir plugin component: {0}")]
    Component(String),
    #[error("configure failed: {0}")]
    Configure(String),
    #[error("{0}")]
    Misused(String),
    #[error("no stock plugin {0:?} in this build")]
    NoStock(&'static str),
}

/// Why a hook call produced no usable action.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("trapped: {0}")]
    Trap(String),
    #[error("ran past its {0:?} deadline")]
    Timeout(Duration),
    #[error("returned invalid output: {0}")]
    Invalid(String),
}

/// Call statistics of one plugin, for the admin surface and the log.
pub struct PluginStats {
    pub calls: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub invalid: AtomicU64,
    /// Wall time of the calls that returned (waiting for an instance included).
    pub latency: crate::stats::Histogram,
    /// The most CPU time a call stopped at its deadline had used, in nanoseconds: how
    /// closely the deadline holds.
    pub timeout_cpu_max_ns: AtomicU64,
}

impl Default for PluginStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            timeout_cpu_max_ns: AtomicU64::new(0),
            latency: crate::stats::Histogram::new(&crate::stats::HOOK_BUCKETS),
        }
    }
}

impl PluginStats {
    /// Calls that failed: traps, timeouts and invalid output.
    pub fn failures(&self) -> u64 {
        self.traps.load(Ordering::Relaxed)
            + self.timeouts.load(Ordering::Relaxed)
            + self.invalid.load(Ordering::Relaxed)
    }
}

/// A live instance. Pooled and handed around boxed: it is a few hundred bytes, moved
/// several times per call otherwise.
struct Instance {
    store: Store<StoreState>,
    bindings: bindings::Plugin,
    meter: Arc<CpuMeter>,
}

/// The header edits a plugin makes to every request or every response of one frontend,
/// when it declared them: weir makes them instead of calling the hook.
#[derive(Default)]
pub struct FixedEdits {
    pub request: Option<Vec<validate::Edit>>,
    pub response: Option<Vec<validate::Edit>>,
}

/// A configured plugin, ready to serve hook calls.
pub struct Plugin {
    pub name: Arc<str>,
    pub info: types::Info,
    pub on_error: FailPolicy,
    /// SHA-256 of the component file, lower-case hex.
    pub sha256: String,
    pub stats: PluginStats,
    /// The request headers its `on-request` reads; None for all.
    pub request_headers: Option<Vec<http::HeaderName>>,
    /// The response headers its `on-response` reads; None for all.
    pub response_headers: Option<Vec<http::HeaderName>>,
    /// The request fields its `on-request` reads.
    pub request_fields: types::RequestFields,
    /// The response fields its `on-response` reads.
    pub response_fields: types::ResponseFields,
    timeout: Duration,
    memory: usize,
    config_json: String,
    pre: bindings::PluginPre<StoreState>,
    state: Arc<PluginState>,
    backends: Arc<[Arc<BackendRt>]>,
    // Boxed on purpose: a pooled instance moves through every call (see `Instance`).
    #[allow(clippy::vec_box)]
    pool: Mutex<Vec<Box<Instance>>>,
}

impl Plugin {
    /// Reads, checks, compiles and configures a plugin: everything that can fail at load.
    pub async fn load(
        cfg: &PluginConfig,
        backends: Arc<[Arc<BackendRt>]>,
    ) -> Result<Plugin, LoadError> {
        match &cfg.source {
            PluginSource::File(file) => {
                // Off the runtime's threads, as `compile`: a slow disk may keep it waiting.
                let path = file.clone();
                let bytes = crate::util::off_runtime(move || std::fs::read(path))
                    .await
                    .map_err(|source| LoadError::Read {
                        path: file.display().to_string(),
                        source,
                    })?;
                Self::from_bytes(cfg, &bytes, backends).await
            }
            PluginSource::Stock(name) => {
                let (_, bytes) = crate::stock::find(name).ok_or(LoadError::NoStock(name))?;
                Self::from_bytes(cfg, bytes, backends).await
            }
        }
    }

    pub async fn from_bytes(
        cfg: &PluginConfig,
        bytes: &[u8],
        backends: Arc<[Arc<BackendRt>]>,
    ) -> Result<Plugin, LoadError> {
        let sha256 = crate::util::sha256_hex(bytes);
        if let Some(expected) = &cfg.sha256
            && *expected != sha256
        {
            return Err(LoadError::Sha256 {
                expected: expected.clone(),
                actual: sha256,
            });
        }
        let component = compile(bytes, &sha256).await?;
        let pre = linker()
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Component(format!("{e:#}")))?;
        let pre =
            bindings::PluginPre::new(pre).map_err(|e| LoadError::Component(format!("{e:#}")))?;
        let mut plugin = Plugin {
            name: cfg.name.as_str().into(),
            info: types::Info {
                name: String::new(),
                version: String::new(),
                hooks: types::Hooks::empty(),
            },
            on_error: cfg.on_error,
            sha256,
            stats: PluginStats::default(),
            request_headers: None,
            response_headers: None,
            request_fields: types::RequestFields::all(),
            response_fields: types::ResponseFields::all(),
            timeout: cfg.timeout,
            memory: cfg.memory as usize,
            config_json: cfg.config_json.clone(),
            pre,
            state: PluginState::for_plugin(&cfg.name),
            backends,
            pool: Mutex::new(Vec::new()),
        };
        // A first instance proves the plugin instantiates, describes itself and accepts its
        // config; it then serves the first calls.
        let (mut instance, info) = plugin.instantiate().await?;
        plugin.info = info;
        // What the plugin reads, declared once after configure.
        let Instance {
            store, bindings, ..
        } = &mut *instance;
        plugin.request_headers = declared_headers(
            "request-headers",
            bindings.call_request_headers(&mut *store).await,
        )?;
        plugin.request_fields = declared(
            "request-fields",
            bindings.call_request_fields(&mut *store).await,
        )?
        .unwrap_or(types::RequestFields::all());
        plugin.response_headers = declared_headers(
            "response-headers",
            bindings.call_response_headers(&mut *store).await,
        )?;
        plugin.response_fields = declared(
            "response-fields",
            bindings.call_response_fields(&mut *store).await,
        )?
        .unwrap_or(types::ResponseFields::all());
        plugin
            .pool
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(instance);
        Ok(plugin)
    }

    pub fn hooks(&self) -> types::Hooks {
        self.info.hooks
    }

    /// The edits the plugin declares it makes to every request and every response of
    /// `frontend` (`request-edits`, `response-edits`), asked once for each frontend
    /// whose chain has it; none for a hook it does not have.
    pub async fn fixed_edits(&self, frontend: &str) -> Result<FixedEdits, LoadError> {
        let hooks = self.hooks();
        if !hooks.intersects(types::Hooks::ON_REQUEST | types::Hooks::ON_RESPONSE) {
            return Ok(FixedEdits::default());
        }
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut instance = match pooled {
            Some(instance) => instance,
            None => self.instantiate().await?.0,
        };
        let Instance {
            store,
            bindings,
            meter,
        } = &mut *instance;
        arm_for_load(store, meter);
        let (request, response) = meter
            .metered(
                std::time::Instant::now(),
                std::pin::pin!(async {
                    let request = bindings.call_request_edits(&mut *store, frontend).await;
                    let response = bindings.call_response_edits(&mut *store, frontend).await;
                    (request, response)
                }),
            )
            .await;
        let fixed = FixedEdits {
            request: declared_edits(&format!("request-edits(\"{frontend}\")"), request)?
                .filter(|_| hooks.contains(types::Hooks::ON_REQUEST)),
            response: declared_edits(&format!("response-edits(\"{frontend}\")"), response)?
                .filter(|_| hooks.contains(types::Hooks::ON_RESPONSE)),
        };
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(instance);
        Ok(fixed)
    }

    /// What `on-request` gets of a request's headers: those the plugin declared, or all.
    pub fn request_headers_of<'a>(
        &'a self,
        map: &'a http::HeaderMap,
    ) -> Vec<types::HeaderParam<'a>> {
        selected_headers(self.request_headers.as_deref(), map)
    }

    /// What `on-request` gets of a request's fields: those the plugin declared.
    pub fn request_values<'a>(
        &self,
        request: &RequestInfo<'a>,
    ) -> Fields<types::RequestValue<'a>, 8> {
        request.values(self.request_fields)
    }

    /// What `on-response` gets of a response's fields: those the plugin declared.
    pub fn response_values<'a>(
        &self,
        response: &ResponseInfo<'a>,
    ) -> Fields<types::ResponseValue<'a>, 7> {
        response.values(self.response_fields)
    }

    /// What `on-response` gets of a response's headers: those the plugin declared, or all.
    pub fn response_headers_of<'a>(
        &'a self,
        map: &'a http::HeaderMap,
    ) -> Vec<types::HeaderParam<'a>> {
        selected_headers(self.response_headers.as_deref(), map)
    }

    fn new_store(&self) -> Store<StoreState> {
        let state = StoreState {
            wasi: sandbox(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.memory)
                .instances(16)
                .tables(64)
                .build(),
            plugin: Arc::clone(&self.name),
            state: Arc::clone(&self.state),
            backends: Arc::clone(&self.backends),
            meter: Arc::default(),
        };
        let mut store = Store::new(engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|cx| Ok(cx.data().meter.check()));
        store
    }

    /// When the epoch first wakes the CPU check of a call, in ticks beyond the engine's
    /// current epoch: one full tick into the call (the current tick is partly over, so
    /// one more; and when the ticker runs late, a busy machine, the epoch lags real time,
    /// so the lag is added). From then on the check runs every tick ([`CpuMeter::check`]);
    /// calls of the usual few microseconds never reach it.
    fn deadline_ticks(&self, now: std::time::Instant) -> u64 {
        if TICKER_ASLEEP.load(Ordering::SeqCst) {
            // The ticker, woken by this call, skips the ticks it slept through.
            return 2;
        }
        let lag = ticks_at(now).saturating_sub(EPOCH.load(Ordering::SeqCst));
        2 + lag
    }

    /// A fresh instance, described and configured.
    async fn instantiate(&self) -> Result<(Box<Instance>, types::Info), Instantiate> {
        let mut store = self.new_store();
        let meter = Arc::clone(&store.data().meter);
        arm_for_load(&mut store, &meter);
        let (bindings, info) = meter
            .metered(
                std::time::Instant::now(),
                std::pin::pin!(async {
                    let bindings = self
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|e| Instantiate::Failed(format!("{e:#}")))?;
                    let info = bindings
                        .call_describe(&mut store)
                        .await
                        .map_err(|e| Instantiate::Failed(format!("describe: {e:#}")))?;
                    match bindings.call_configure(&mut store, &self.config_json).await {
                        Ok(Ok(())) => Ok((bindings, info)),
                        Ok(Err(msg)) => Err(Instantiate::Configure(msg)),
                        Err(e) => Err(Instantiate::Configure(format!("trapped: {e:#}"))),
                    }
                }),
            )
            .await?;
        Ok((
            Box::new(Instance {
                store,
                bindings,
                meter,
            }),
            info,
        ))
    }

    /// A pooled instance, or a fresh one, armed with the call deadline, and the time the
    /// call begins: `now`, read by the caller, for a pooled instance; a new reading once a
    /// fresh one is made.
    async fn take(
        &self,
        now: std::time::Instant,
    ) -> Result<(Box<Instance>, std::time::Instant), HookError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut instance, now) = match pooled {
            Some(i) => (i, now),
            None => {
                let fresh = self.instantiate().await.map(|(i, _)| i).map_err(|e| {
                    self.stats.traps.fetch_add(1, Ordering::Relaxed);
                    HookError::Trap(e.to_string())
                })?;
                (fresh, std::time::Instant::now())
            }
        };
        instance.meter.start(self.timeout);
        call_starting();
        instance.store.set_epoch_deadline(self.deadline_ticks(now));
        Ok((instance, now))
    }

    /// Returns a healthy instance to the pool. An instance whose call failed is dropped
    /// (after a trap its state cannot be trusted) and a replacement is built in the
    /// background, so the next request does not wait for it.
    fn finish<R>(
        self: &Arc<Self>,
        instance: Box<Instance>,
        started: std::time::Instant,
        result: wasmtime::Result<R>,
    ) -> Result<R, HookError> {
        self.stats.latency.observe(started.elapsed());
        if result.is_err() {
            self.replenish();
        }
        match result {
            Ok(r) => {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < POOL_MAX {
                    pool.push(instance);
                }
                Ok(r)
            }
            Err(e) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                self.stats.timeout_cpu_max_ns.fetch_max(
                    instance.meter.stopped_at_ns.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                Err(HookError::Timeout(self.timeout))
            }
            Err(e) => {
                self.stats.traps.fetch_add(1, Ordering::Relaxed);
                Err(HookError::Trap(format!("{e:#}")))
            }
        }
    }

    fn replenish(self: &Arc<Self>) {
        let plugin = Arc::clone(self);
        tokio::spawn(async move {
            if let Ok((instance, _)) = plugin.instantiate().await {
                let mut pool = plugin.pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < POOL_MAX {
                    pool.push(instance);
                }
            }
        });
    }

    pub async fn on_request(
        self: &Arc<Self>,
        request: types::Request<'_>,
    ) -> Result<types::RequestAction, HookError> {
        let started = std::time::Instant::now();
        let (mut i, now) = self.take(started).await?;
        let Instance {
            store,
            bindings,
            meter,
        } = &mut *i;
        let result = meter
            .metered(
                now,
                std::pin::pin!(bindings.call_on_request(store, request)),
            )
            .await;
        self.finish(i, started, result)
    }

    pub async fn on_response(
        self: &Arc<Self>,
        response: types::Response<'_>,
    ) -> Result<types::ResponseAction, HookError> {
        let started = std::time::Instant::now();
        let (mut i, now) = self.take(started).await?;
        let Instance {
            store,
            bindings,
            meter,
        } = &mut *i;
        let result = meter
            .metered(
                now,
                std::pin::pin!(bindings.call_on_response(store, response)),
            )
            .await;
        self.finish(i, started, result)
    }

    pub async fn on_health_check(
        self: &Arc<Self>,
        probe: types::Probe<'_>,
    ) -> Result<types::Verdict, HookError> {
        let started = std::time::Instant::now();
        let (mut i, now) = self.take(started).await?;
        let Instance {
            store,
            bindings,
            meter,
        } = &mut *i;
        let result = meter
            .metered(
                now,
                std::pin::pin!(bindings.call_on_health_check(store, probe)),
            )
            .await;
        self.finish(i, started, result)
    }

    /// Counts invalid output, which the caller found, like a failure of the call.
    pub fn note_invalid(&self) {
        self.stats.invalid.fetch_add(1, Ordering::Relaxed);
    }

    /// Instances ready in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[derive(Debug, thiserror::Error)]
enum Instantiate {
    #[error("{0}")]
    Failed(String),
    #[error("configure failed: {0}")]
    Configure(String),
}

impl From<Instantiate> for LoadError {
    fn from(e: Instantiate) -> LoadError {
        match e {
            Instantiate::Configure(msg) => LoadError::Configure(msg),
            Instantiate::Failed(msg) => LoadError::Component(msg),
        }
    }
}

/// A plugin's answer to one of its declaration exports, or the load error naming it.
fn declared<T>(export: &str, answer: wasmtime::Result<T>) -> Result<T, LoadError> {
    answer.map_err(|e| LoadError::Component(format!("{export}: {e:#}")))
}

/// The header names a plugin declared it reads, each checked; None (all) stays None.
fn declared_headers(
    export: &str,
    answer: wasmtime::Result<Option<Vec<String>>>,
) -> Result<Option<Vec<http::HeaderName>>, LoadError> {
    declared(export, answer)?
        .map(|names| names.iter().map(|n| validate::header_name(n)).collect())
        .transpose()
        .map_err(|e| LoadError::Component(format!("{export}: {e}")))
}

/// The edits a plugin declared it makes to every message, checked as a hook's edits are.
fn declared_edits(
    export: &str,
    answer: wasmtime::Result<Option<Vec<types::HeaderOp>>>,
) -> Result<Option<Vec<validate::Edit>>, LoadError> {
    declared(export, answer)?
        .map(|ops| validate::edits(&ops))
        .transpose()
        .map_err(|e| LoadError::Component(format!("{export}: {e}")))
}

/// The headers of `names` (all of them for None) as plugins see them.
fn selected_headers<'a>(
    names: Option<&'a [http::HeaderName]>,
    map: &'a http::HeaderMap,
) -> Vec<types::HeaderParam<'a>> {
    match names {
        None => headers_of(map),
        Some(names) => names
            .iter()
            .flat_map(|n| map.get_all(n).iter().map(move |v| (n, v)))
            .filter_map(header_of)
            .collect(),
    }
}

/// What the proxy knows of a request: every field `on-request` may get.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: Option<&'a str>,
    pub client_ip: &'a str,
    pub frontend: &'a str,
    pub scheme: &'a str,
    pub backend: &'a str,
}

impl<'a> RequestInfo<'a> {
    /// The fields in `read` that the request has, in the order of `request-fields`.
    pub fn values(&self, read: types::RequestFields) -> Fields<types::RequestValue<'a>, 8> {
        use types::{RequestFields as F, RequestValue as V};
        Fields::select(
            || V::Method(""),
            [
                (read.contains(F::METHOD), Some(V::Method(self.method))),
                (read.contains(F::PATH), Some(V::Path(self.path))),
                (read.contains(F::QUERY), self.query.map(V::Query)),
                (read.contains(F::HOST), self.host.map(V::Host)),
                (
                    read.contains(F::CLIENT_IP),
                    Some(V::ClientIp(self.client_ip)),
                ),
                (read.contains(F::FRONTEND), Some(V::Frontend(self.frontend))),
                (read.contains(F::SCHEME), Some(V::Scheme(self.scheme))),
                (read.contains(F::BACKEND), Some(V::Backend(self.backend))),
            ],
        )
    }
}

/// What the proxy knows of a response: every field `on-response` may get.
#[derive(Debug, Clone, Copy)]
pub struct ResponseInfo<'a> {
    /// The backend and server that answered; none for a local response.
    pub backend: Option<&'a str>,
    pub server: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub client_ip: &'a str,
    pub scheme: &'a str,
    pub frontend: &'a str,
}

impl<'a> ResponseInfo<'a> {
    /// The fields in `read` that the response has, in the order of `response-fields`.
    pub fn values(&self, read: types::ResponseFields) -> Fields<types::ResponseValue<'a>, 7> {
        use types::{ResponseFields as F, ResponseValue as V};
        Fields::select(
            || V::Method(""),
            [
                (read.contains(F::BACKEND), self.backend.map(V::Backend)),
                (read.contains(F::SERVER), self.server.map(V::Server)),
                (read.contains(F::METHOD), Some(V::Method(self.method))),
                (read.contains(F::PATH), Some(V::Path(self.path))),
                (
                    read.contains(F::CLIENT_IP),
                    Some(V::ClientIp(self.client_ip)),
                ),
                (read.contains(F::SCHEME), Some(V::Scheme(self.scheme))),
                (read.contains(F::FRONTEND), Some(V::Frontend(self.frontend))),
            ],
        )
    }
}

/// The fields a hook gets, at most `N` (one of each kind), kept on the stack.
pub struct Fields<T, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T, const N: usize> Fields<T, N> {
    /// The values that are present and wanted, in order (`filler` fills the unused slots).
    fn select(filler: impl Fn() -> T, values: [(bool, Option<T>); N]) -> Self {
        let mut fields = Fields {
            items: std::array::from_fn(|_| filler()),
            len: 0,
        };
        for (wanted, value) in values {
            if let Some(value) = value.filter(|_| wanted) {
                fields.items[fields.len] = value;
                fields.len += 1;
            }
        }
        fields
    }

    /// As a hook's `fields`: none when there are none, since even an empty list costs a
    /// call into the plugin's allocator.
    pub fn list(&self) -> Option<&[T]> {
        (self.len > 0).then(|| &self.items[..self.len])
    }
}

/// A header list as it goes into a hook: none when empty, since even an empty list costs
/// a call into the plugin's allocator.
pub fn header_list<'a, 'h>(
    headers: &'a [types::HeaderParam<'h>],
) -> Option<&'a [types::HeaderParam<'h>]> {
    (!headers.is_empty()).then_some(headers)
}

/// A header map as plugins see it (values that are not text are left out).
/// The headers borrow from the map: they are copied once, into the sandbox.
pub fn headers_of(map: &http::HeaderMap) -> Vec<types::HeaderParam<'_>> {
    map.iter().filter_map(header_of).collect()
}

fn header_of<'a>(
    (n, v): (&'a http::HeaderName, &'a http::HeaderValue),
) -> Option<types::HeaderParam<'a>> {
    v.to_str().ok().map(|v| types::HeaderParam {
        name: n.as_str(),
        value: v,
    })
}

/// Every plugin of a config, loaded: what `weir check` proves and what the proxy runs.
pub async fn load_all(
    configs: &[PluginConfig],
    backends: Arc<[Arc<BackendRt>]>,
) -> Result<Vec<Arc<Plugin>>, (String, LoadError)> {
    let mut plugins = Vec::with_capacity(configs.len());
    for cfg in configs {
        let plugin = Plugin::load(cfg, Arc::clone(&backends))
            .await
            .map_err(|e| (cfg.name.clone(), e))?;
        plugins.push(Arc::new(plugin));
    }
    Ok(plugins)
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
