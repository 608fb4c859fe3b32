//! A plugin's instances: made fresh (instantiated, described, configured, within a load
//! deadline), kept in a pool, taken for one call with its CPU deadline armed, and given
//! back after it; an instance whose call failed is dropped and replaced in the background.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder, Trap};

use super::engine::{self, CpuMeter, StoreState};
use super::wire::l4;
use super::{HookError, LoadError, Plugin, bindings, types};

/// Instances kept ready per plugin.
const POOL_MAX: usize = 64;

/// A live instance. Pooled and handed around boxed: it is a few hundred bytes, moved
/// several times per call otherwise.
pub(super) struct Instance {
    pub(super) store: Store<StoreState>,
    pub(super) bindings: bindings::Plugin,
    pub(super) meter: Arc<CpuMeter>,
    /// `on-connect`, for a component of the world `plugin-l4`.
    pub(super) on_connect: Option<OnConnect>,
    /// Made for calls on the caller's stack (its imports never wait).
    pub(super) at_once: bool,
}

/// `on-connect` as the sandbox takes it.
pub(super) type OnConnect = wasmtime::component::TypedFunc<(l4::Connection,), (l4::ConnectAction,)>;

impl Plugin {
    pub(super) fn new_store(&self) -> Store<StoreState> {
        let state = StoreState {
            wasi: engine::sandbox(),
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
        let mut store = Store::new(engine::engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|cx| Ok(cx.data().meter.check()));
        store
    }

    /// A fresh instance, described and configured: for calls on the caller's stack while
    /// the plugin's calls run there, else for fibers.
    pub(super) async fn instantiate(&self) -> Result<(Box<Instance>, types::Info), Instantiate> {
        if let Some(pre) = &self.pre_at_once
            && self.sync_calls.load(Ordering::Relaxed)
        {
            match self.instantiate_with(pre, true).await {
                // It waited while configured: it is made again, for fibers.
                Err(Instantiate::Waited) => self.to_fibers("configure came to a wait"),
                made => return made,
            }
        }
        self.instantiate_with(&self.pre, false).await
    }

    async fn instantiate_with(
        &self,
        pre: &bindings::PluginPre<StoreState>,
        at_once: bool,
    ) -> Result<(Box<Instance>, types::Info), Instantiate> {
        let mut store = self.new_store();
        let meter = Arc::clone(&store.data().meter);
        engine::arm_for_load(&mut store, &meter);
        let (bindings, on_connect, info) = meter
            .metered(
                std::time::Instant::now(),
                std::pin::pin!(async {
                    let failed = |e: wasmtime::Error| Instantiate::Failed(format!("{e:#}"));
                    let instance = pre
                        .instance_pre()
                        .instantiate_async(&mut store)
                        .await
                        .map_err(failed)?;
                    let bindings = bindings::Plugin::new(&mut store, &instance).map_err(failed)?;
                    let on_connect = match instance.get_export_index(&mut store, None, "on-connect")
                    {
                        None => None,
                        Some(index) => Some(
                            instance
                                .get_typed_func(&mut store, index)
                                .map_err(|e| failed(e.context("on-connect")))?,
                        ),
                    };
                    let info = bindings
                        .call_describe(&mut store)
                        .await
                        .map_err(|e| Instantiate::Failed(format!("describe: {e:#}")))?;
                    match bindings.call_configure(&mut store, &self.config_json).await {
                        Ok(Ok(())) => Ok((bindings, on_connect, info)),
                        Ok(Err(msg)) => Err(Instantiate::Configure(msg)),
                        Err(e) if e.is::<engine::WouldWait>() => Err(Instantiate::Waited),
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
                on_connect,
                at_once,
            }),
            info,
        ))
    }

    /// A pooled instance, or a fresh one, armed with the call deadline, and the time the
    /// call begins: `now`, read by the caller, for a pooled instance; a new reading once a
    /// fresh one is made.
    pub(super) async fn take(
        &self,
        now: std::time::Instant,
    ) -> Result<(Box<Instance>, std::time::Instant), HookError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let pooled = loop {
            let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match pooled {
                // Made for the stack, and the plugin's calls have moved to fibers.
                Some(i) if i.at_once && !self.sync_calls.load(Ordering::Relaxed) => continue,
                pooled => break pooled,
            }
        };
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
        let quiet =
            engine::call_starting(instance.at_once && self.timeout >= engine::QUIET_MIN_TIMEOUT);
        instance
            .store
            .set_epoch_deadline(engine::deadline_ticks(now, quiet));
        Ok((instance, now))
    }

    /// Returns a healthy instance to the pool. An instance whose call failed is dropped
    /// (after a trap its state cannot be trusted) and a replacement is built in the
    /// background, so the next request does not wait for it.
    pub(super) fn finish<R>(
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
            // Not the plugin's failure: the operator chose to refuse while Redis is away.
            Err(e) if e.downcast_ref::<crate::state::StoreDown>().is_some() => {
                Err(HookError::StoreDown)
            }
            Err(e) => {
                self.stats.traps.fetch_add(1, Ordering::Relaxed);
                Err(HookError::Trap(format!("{e:#}")))
            }
        }
    }

    pub(super) fn replenish(self: &Arc<Self>) {
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

    /// Instances ready in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum Instantiate {
    #[error("{0}")]
    Failed(String),
    #[error("configure failed: {0}")]
    Configure(String),
    /// Configure came to a wait on an instance for the caller's stack.
    #[error("configure came to a wait")]
    Waited,
}

impl From<Instantiate> for LoadError {
    fn from(e: Instantiate) -> LoadError {
        match e {
            Instantiate::Configure(msg) => LoadError::Configure(msg),
            Instantiate::Failed(msg) => LoadError::Component(msg),
            Instantiate::Waited => LoadError::Configure("came to a wait".into()),
        }
    }
}
