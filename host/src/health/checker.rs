//! The check loop of one server: probe, feed the state machine, log transitions, sleep.
//! Checks run on their own tasks, never on the request path.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::probe;
use crate::balance::random_unit;
use crate::config::CheckKind;
use crate::plugin::Plugin;
use crate::upstream::{AdminState, BackendRt};

/// Starts a check loop for every server that has a health check, spread over the first
/// interval so that checks do not all fire at once.
pub fn spawn_all(
    backends: &[Arc<BackendRt>],
    plugins: &[Arc<Plugin>],
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let checked: Vec<(Arc<BackendRt>, usize)> = backends
        .iter()
        .flat_map(|b| {
            (0..b.servers.len())
                .filter(|&i| b.servers[i].cfg.health.is_some())
                .map(move |i| (Arc::clone(b), i))
        })
        .collect();
    let total = checked.len();
    checked
        .into_iter()
        .enumerate()
        .map(|(position, (backend, i))| {
            let interval = backend.servers[i]
                .cfg
                .health
                .as_ref()
                .map_or(Duration::ZERO, |c| c.interval);
            let delay = interval.mul_f64(position as f64 / total as f64);
            let judge = judging_plugin(&backend, i, plugins);
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = check_loop(backend, i, delay, judge) => {}
                    _ = stop.changed() => {}
                }
            })
        })
        .collect()
}

/// The plugin a server's HTTP check names, if any (its presence was checked at load).
fn judging_plugin(backend: &BackendRt, i: usize, plugins: &[Arc<Plugin>]) -> Option<Arc<Plugin>> {
    let check = backend.servers[i].cfg.health.as_ref()?;
    let CheckKind::Http(http) = &check.kind else {
        return None;
    };
    let name = http.plugin.as_deref()?;
    plugins.iter().find(|p| &*p.name == name).cloned()
}

async fn check_loop(
    backend: Arc<BackendRt>,
    i: usize,
    first_delay: Duration,
    judge: Option<Arc<Plugin>>,
) {
    let server = Arc::clone(&backend.servers[i]);
    let Some(check) = server.cfg.health.clone() else {
        return;
    };
    tokio::select! {
        _ = tokio::time::sleep(first_delay) => {}
        _ = server.health.wake.notified() => {}
    }
    loop {
        if server.admin() != AdminState::Maint {
            let judge = judge.as_ref().map(|plugin| probe::Judge {
                plugin,
                backend: &backend.name,
                server: &server.name,
            });
            let probe::Checked { result, weight } =
                probe::run_judged(&check, &server.cfg, judge).await;
            if let Some(w) = weight {
                // A judging plugin owns the server's weight: its own, or the configured one.
                server.weight.store(
                    w.unwrap_or(server.cfg.weight),
                    std::sync::atomic::Ordering::Release,
                );
            }
            let reason = result.to_string();
            if let Some(transition) = server.health.record(result, check.rise, check.fall) {
                backend.on_transition(i, transition, &reason);
            }
        }
        let detail = server.health.snapshot();
        let delay = probe::next_delay(&check, detail.up, detail.changing(), random_unit());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = server.health.wake.notified() => {}
        }
    }
}
