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

mod candidate;
mod cpu_timer;
mod engine;
mod host;
mod inspect;
mod instances;
mod shadow_thread;
pub mod validate;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{FailPolicy, PluginConfig, PluginSource};
use crate::state::PluginState;
use crate::upstream::BackendRt;
pub use candidate::{Candidate, Counts, Disagreement, ShadowNote, ShadowStats, Taken};
use engine::{CpuMeter, StoreState, advance_epoch_from_signal, arm_for_load, compile, linker};
pub use engine::{
    LONG_CALL_SLICE, TICK, calls_running_long, epoch_thread_asleep, stall_epoch_thread,
};
pub use inspect::{Inspection, inspect};
use instances::Instance;
pub use wire::{
    Answer, ConnectDecision, ConnectInfo, Fields, HealthProbe, HealthVerdict, Hook, Proceed,
    RequestDecision, RequestInfo, ResponseDecision, ResponseInfo, header_list, headers_of,
};
use wire::{declared, declared_edits, declared_headers, selected_headers};

/// The types the bindings generate from the WIT. The rest of the host never names them
/// (it calls the hooks with weir's own types, [`RequestInfo`] and the like); they are
/// public for the fuzz targets and the hook bench.
pub use bindings::weir::plugin::types;

#[allow(clippy::all)]
mod bindings {
    // Exports are called asynchronously, so that WASI's stream functions (a plugin that
    // prints or panics) never block a tokio worker. Of weir's own imports, counters and kv
    // are asynchronous too (with Redis as the store, a call may wait for it, within its
    // timeout) and may trap (`on_error = "deny"` while Redis is away).
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        exports: { default: async },
        imports: {
            "weir:plugin/counters.add": async | trappable,
            "weir:plugin/counters.add-sliding": async | trappable,
            "weir:plugin/kv": async | trappable,
        },
        // Records passed into a hook borrow their strings (`RequestParam<'a>` and the
        // like): the request's fields go to the sandbox without being copied twice.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
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
    #[error("candidate: {0}")]
    Candidate(Box<LoadError>),
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
    /// The plugin needed the shared store while Redis was away, with `on_error = "deny"`.
    #[error("{}", crate::state::StoreDown)]
    StoreDown,
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
    /// A call of it held its thread for a tick or more, or came to a wait, on the
    /// caller's stack: its calls run on fibers from then on, in later generations too.
    pub on_fibers: AtomicBool,
}

impl Default for PluginStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            timeout_cpu_max_ns: AtomicU64::new(0),
            on_fibers: AtomicBool::new(false),
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

/// The header edits a plugin makes to every request or every response of one frontend,
/// when it declared them: weir makes them instead of calling the hook.
#[derive(Default)]
pub struct FixedEdits {
    pub request: Option<Vec<validate::Edit>>,
    pub response: Option<Vec<validate::Edit>>,
}

/// One call of a hook's export on a pooled instance, made again on a fiber when it came
/// to a wait on the caller's stack ([`Plugin::waited`]). `$export`: the function to
/// call, from the instance's bindings and `on-connect` (bound by the two patterns);
/// `$params`, evaluated for each attempt: its argument. A macro rather than a function:
/// the export's parameters borrow for as long as the instance's bindings are borrowed.
macro_rules! call_hook {
    ($plugin:expr, |$bindings:pat_param, $on_connect:pat_param| $export:expr, $params:expr) => {
        loop {
            let started = std::time::Instant::now();
            let (mut i, now) = $plugin.take(started).await?;
            let Instance {
                store,
                meter,
                bindings: $bindings,
                on_connect: $on_connect,
                at_once: _,
            } = &mut *i;
            let export = $export;
            let result = $plugin.run(store, meter, now, export, ($params,)).await;
            if !$plugin.waited(&result) {
                break $plugin.finish(i, started, result);
            }
        }
    };
}

/// A configured plugin, ready to serve hook calls.
pub struct Plugin {
    pub name: Arc<str>,
    info: types::Info,
    pub on_error: FailPolicy,
    /// SHA-256 of the component file, lower-case hex.
    pub sha256: String,
    /// Shared with the plugin of the same name in the generations before and after this
    /// one, so that its counters go on across reloads.
    pub stats: Arc<PluginStats>,
    /// The request headers its `on-request` reads; None for all.
    pub request_headers: Option<Vec<http::HeaderName>>,
    /// The response headers its `on-response` reads; None for all.
    pub response_headers: Option<Vec<http::HeaderName>>,
    /// The request fields its `on-request` reads.
    request_fields: types::RequestFields,
    /// The response fields its `on-response` reads.
    response_fields: types::ResponseFields,
    /// It has `on-connect` (its component is of the world `plugin-l4`).
    connects: bool,
    /// A candidate version run beside it (`candidate = {...}`).
    pub candidate: Option<Candidate>,
    /// Its calls run on the caller's stack, with no fiber: its instances can never wait
    /// ([`engine::linker`]), and no call of it has held its thread for a tick. One that
    /// does sends the calls after it to fibers, where a long call yields every slice.
    sync_calls: AtomicBool,
    timeout: Duration,
    memory: usize,
    config_json: String,
    /// Its instances for fibers, whose imports may wait.
    pre: bindings::PluginPre<StoreState>,
    /// Its instances for calls on the caller's stack, whose imports answer at once
    /// (`engine::linker`); none when its calls run on fibers from the start (`load`).
    pre_at_once: Option<bindings::PluginPre<StoreState>>,
    state: Arc<PluginState>,
    backends: Arc<[Arc<BackendRt>]>,
    // Boxed on purpose: a pooled instance moves through every call (see `Instance`).
    #[allow(clippy::vec_box)]
    pool: Mutex<Vec<Box<Instance>>>,
}

impl Plugin {
    /// Reads, checks, compiles and configures a plugin: everything that can fail at load.
    /// `on_fibers`: its calls run on fibers from the start, never on the caller's stack
    /// (`[state]` names Redis, which a call may wait for; or the plugin's calls moved to
    /// fibers in an earlier generation).
    pub async fn load(
        cfg: &PluginConfig,
        backends: Arc<[Arc<BackendRt>]>,
        on_fibers: bool,
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
                Self::from_bytes(cfg, &bytes, backends, on_fibers).await
            }
            PluginSource::Stock(name) => {
                let (_, bytes) = crate::stock::find(name).ok_or(LoadError::NoStock(name))?;
                Self::from_bytes(cfg, bytes, backends, on_fibers).await
            }
        }
    }

    pub async fn from_bytes(
        cfg: &PluginConfig,
        bytes: &[u8],
        backends: Arc<[Arc<BackendRt>]>,
        on_fibers: bool,
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
        let pre_of = |waits: bool| {
            let pre = linker(waits)
                .instantiate_pre(&component)
                .map_err(|e| LoadError::Component(format!("{e:#}")))?;
            bindings::PluginPre::new(pre).map_err(|e| LoadError::Component(format!("{e:#}")))
        };
        let pre = pre_of(true)?;
        let pre_at_once = if on_fibers {
            None
        } else {
            Some(pre_of(false)?)
        };
        let mut plugin = Plugin {
            name: cfg.name.as_str().into(),
            info: types::Info {
                name: String::new(),
                version: String::new(),
                hooks: types::Hooks::empty(),
            },
            on_error: cfg.on_error,
            sha256,
            stats: Arc::default(),
            request_headers: None,
            response_headers: None,
            request_fields: types::RequestFields::all(),
            response_fields: types::ResponseFields::all(),
            connects: false,
            candidate: None,
            sync_calls: AtomicBool::new(pre_at_once.is_some()),
            timeout: cfg.timeout,
            memory: cfg.memory as usize,
            config_json: cfg.config_json.clone(),
            pre,
            pre_at_once,
            state: PluginState::for_plugin(&cfg.name),
            backends,
            pool: Mutex::new(Vec::new()),
        };
        // A first instance proves the plugin instantiates, describes itself and accepts its
        // config; it then serves the first calls.
        let (mut instance, info) = plugin.instantiate().await?;
        plugin.info = info;
        plugin.connects = instance.on_connect.is_some();
        // Whether its instances can be called on the caller's stack: none of the imports
        // it uses is asynchronous (wasmtime refuses a synchronous call otherwise).
        if instance.at_once {
            let Instance {
                store, bindings, ..
            } = &mut *instance;
            let synchronous = bindings.func_describe().call(&mut *store, ()).is_ok();
            plugin.sync_calls.store(synchronous, Ordering::Relaxed);
        }
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

    /// The edits the plugin declares it makes to every request and every response of
    /// `frontend` (`request-edits`, `response-edits`), asked once for each frontend
    /// whose chain has it; none for a hook it does not have.
    pub async fn fixed_edits(&self, frontend: &str) -> Result<FixedEdits, LoadError> {
        let hooks = self.info.hooks;
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
            ..
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

    /// Whether the plugin has `hook` (the host never calls the others).
    pub fn has(&self, hook: Hook) -> bool {
        self.info.hooks.contains(match hook {
            Hook::Request => types::Hooks::ON_REQUEST,
            Hook::Response => types::Hooks::ON_RESPONSE,
            Hook::HealthCheck => types::Hooks::ON_HEALTH_CHECK,
        })
    }

    /// Whether it has `on-connect`, which tcp frontends call.
    pub fn connects(&self) -> bool {
        self.connects
    }

    /// `on-connect`: the plugin's decision on a tcp frontend's connection, checked.
    pub async fn on_connect(
        self: &Arc<Self>,
        connection: &ConnectInfo,
    ) -> Result<ConnectDecision, HookError> {
        if !self.connects {
            return Err(HookError::Invalid("the plugin has no on-connect".into()));
        }
        let action = call_hook!(
            self,
            // Every instance of one component has the same exports.
            |_, on_connect| on_connect.expect("an instance of a plugin that connects"),
            wire::l4::Connection {
                client_ip: connection.client_ip.clone(),
                local_addr: connection.local_addr.clone(),
                frontend: connection.frontend.clone(),
                sni: connection.sni.clone(),
                alpn: connection.alpn.clone(),
                client_connections: connection.client_connections,
                id: connection.id,
            }
        )?;
        self.checked(wire::connect_decision(action))
    }

    /// The name and version the plugin describes itself with.
    pub fn describe(&self) -> (&str, &str) {
        (&self.info.name, &self.info.version)
    }

    /// `on-request`, given the fields of `request` and the `headers` the plugin declared
    /// it reads; its answer checked. `id`: the request's number within the process.
    pub async fn on_request(
        self: &Arc<Self>,
        request: &RequestInfo<'_>,
        headers: &http::HeaderMap,
        id: u64,
    ) -> Result<RequestDecision, HookError> {
        let headers = self.request_headers_of(headers);
        let fields = self.request_values(request);
        let request = types::Request {
            fields: fields.list(),
            headers: header_list(&headers),
            id,
        };
        let action = self.call_on_request(request).await?;
        self.checked(wire::request_decision(action))
    }

    /// `on-response`, given the fields of `response` and the `headers` the plugin
    /// declared it reads, its `status`, and the `note` its `on-request` left; its answer
    /// checked.
    pub async fn on_response(
        self: &Arc<Self>,
        response: &ResponseInfo<'_>,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        id: u64,
        note: Option<&str>,
    ) -> Result<ResponseDecision, HookError> {
        let headers = selected_headers(self.response_headers.as_deref(), headers);
        let fields = response.values(self.response_fields);
        let response = types::Response {
            status: status.as_u16(),
            headers: header_list(&headers),
            fields: fields.list(),
            id,
            note,
        };
        let action = self.call_on_response(response).await?;
        self.checked(wire::response_decision(action))
    }

    /// `on-health-check`: the plugin's verdict on a check's response.
    pub async fn on_health_check(
        self: &Arc<Self>,
        probe: &HealthProbe<'_>,
    ) -> Result<HealthVerdict, HookError> {
        let headers = headers_of(probe.headers);
        let probe = types::Probe {
            backend: probe.backend,
            server: probe.server,
            status: probe.status,
            headers: &headers,
            body_prefix: probe.body_prefix,
        };
        Ok(match self.call_on_health_check(probe).await? {
            types::Verdict::Up(weight) => HealthVerdict::Up(weight),
            types::Verdict::Down(reason) => HealthVerdict::Down(reason),
        })
    }

    /// A decision, or its refusal counted as invalid output.
    fn checked<T>(&self, decision: Result<T, String>) -> Result<T, HookError> {
        decision.map_err(|why| {
            self.note_invalid();
            HookError::Invalid(why)
        })
    }

    /// What `on-request` gets of a request's headers: those the plugin declared, or all.
    /// For the hook bench, as [`Self::call_on_request`].
    #[doc(hidden)]
    pub fn request_headers_of<'a>(
        &'a self,
        map: &'a http::HeaderMap,
    ) -> Vec<types::HeaderParam<'a>> {
        selected_headers(self.request_headers.as_deref(), map)
    }

    /// What `on-request` gets of a request's fields: those the plugin declared. For the
    /// hook bench, as [`Self::call_on_request`].
    #[doc(hidden)]
    pub fn request_values<'a>(
        &self,
        request: &RequestInfo<'a>,
    ) -> Fields<types::RequestValue<'a>, 8> {
        request.values(self.request_fields)
    }

    /// `on-request` as the sandbox takes it: for the hook bench, which measures the call
    /// with other selections of fields and headers than the plugin declared.
    #[doc(hidden)]
    pub async fn call_on_request(
        self: &Arc<Self>,
        request: types::Request<'_>,
    ) -> Result<types::RequestAction, HookError> {
        call_hook!(
            self,
            |bindings, _| bindings.func_on_request(),
            request.clone()
        )
    }

    async fn call_on_response(
        self: &Arc<Self>,
        response: types::Response<'_>,
    ) -> Result<types::ResponseAction, HookError> {
        call_hook!(
            self,
            |bindings, _| bindings.func_on_response(),
            response.clone()
        )
    }

    async fn call_on_health_check(
        self: &Arc<Self>,
        probe: types::Probe<'_>,
    ) -> Result<types::Verdict, HookError> {
        call_hook!(
            self,
            |bindings, _| bindings.func_on_health_check(),
            probe.clone()
        )
    }

    /// Runs one hook call on a taken instance: on this thread's stack while the plugin's
    /// calls are short ([`Self::sync_calls`]), else on a fiber, where a long call yields
    /// to the thread's other tasks. `now`: as [`CpuMeter::metered`] takes it.
    async fn run<P, R>(
        &self,
        store: &mut wasmtime::Store<StoreState>,
        meter: &CpuMeter,
        now: std::time::Instant,
        func: wasmtime::component::TypedFunc<P, (R,)>,
        params: P,
    ) -> wasmtime::Result<R>
    where
        P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower + Send + Sync,
        R: wasmtime::component::ComponentType + wasmtime::component::Lift + Send + Sync + 'static,
    {
        if self.sync_calls.load(Ordering::Relaxed) {
            let (result, held) = meter.at_once(now, || func.call(&mut *store, params));
            if held {
                self.to_fibers("a call held its thread for a tick or more");
            }
            return result.map(|(r,)| r);
        }
        let call = async { func.call_async(&mut *store, params).await.map(|(r,)| r) };
        meter.metered(now, std::pin::pin!(call)).await
    }

    /// From now on its calls run on fibers (in later generations too).
    fn to_fibers(&self, why: &str) {
        self.stats.on_fibers.store(true, Ordering::Relaxed);
        if self.sync_calls.swap(false, Ordering::Relaxed) {
            tracing::info!(
                plugin = &*self.name,
                "{why} on the caller's stack: its calls run on fibers from now on, where a long call yields and a wait holds no thread"
            );
        }
    }

    /// Whether a call on the caller's stack stopped at a wait: the plugin's calls move to
    /// fibers, and the caller makes this one again there. Its instance, stopped mid-call,
    /// is dropped and replaced, and the call is counted once.
    fn waited<R>(self: &Arc<Self>, result: &wasmtime::Result<R>) -> bool {
        let waited = matches!(result, Err(e) if e.is::<engine::WouldWait>());
        if waited {
            self.to_fibers("a call came to a wait");
            self.stats.calls.fetch_sub(1, Ordering::Relaxed);
            self.replenish();
        }
        waited
    }

    /// Whether its calls run on the caller's stack now (see [`Self::sync_calls`]).
    pub fn calls_on_stack(&self) -> bool {
        self.sync_calls.load(Ordering::Relaxed)
    }

    /// Counts invalid output, which the caller found, like a failure of the call.
    pub fn note_invalid(&self) {
        self.stats.invalid.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every plugin of a config, loaded: what `weir check` proves and what the proxy runs.
/// `before`: the plugins of the generation these replace, whose counters go on in the
/// plugins of the same names (and one whose calls moved to fibers there starts on them).
/// `shared_store`: `[state]` names Redis.
pub async fn load_all(
    configs: &[PluginConfig],
    backends: Arc<[Arc<BackendRt>]>,
    before: &[Arc<Plugin>],
    shared_store: bool,
) -> Result<Vec<Arc<Plugin>>, (String, LoadError)> {
    let mut plugins = Vec::with_capacity(configs.len());
    for cfg in configs {
        let old = before.iter().find(|p| *p.name == *cfg.name);
        let on_fibers =
            shared_store || old.is_some_and(|o| o.stats.on_fibers.load(Ordering::Relaxed));
        let mut plugin = Plugin::load(cfg, Arc::clone(&backends), on_fibers)
            .await
            .map_err(|e| (cfg.name.clone(), e))?;
        if let Some(old) = old {
            plugin.stats = Arc::clone(&old.stats);
        }
        if let Some(c) = &cfg.candidate {
            let candidate = Plugin::load(&c.plugin, Arc::clone(&backends), shared_store)
                .await
                .map_err(|e| (cfg.name.clone(), LoadError::Candidate(Box::new(e))))?;
            let previous = old.and_then(|o| o.candidate.as_ref());
            plugin.candidate = Some(Candidate::new(candidate, c, previous));
        }
        plugins.push(Arc::new(plugin));
    }
    Ok(plugins)
}
