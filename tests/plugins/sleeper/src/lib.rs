//! Sleeps `ms` milliseconds in every `on-request` call (a wait on WASI's monotonic clock,
//! not CPU), then lets the request through with `x-slept: <ms>`. A plugin whose calls can
//! wait: weir runs them on fibers, and the wait holds no thread.

use serde::Deserialize;
use weir_sdk::{Hooks, Plugin, Proceed, Request, RequestAction, export_plugin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub ms: u64,
}

pub struct Sleeper(Config);

impl Plugin for Sleeper {
    type Config = Config;
    const NAME: &'static str = "sleeper";
    const VERSION: &'static str = "0.1.0";
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn configure(config: Config) -> Result<Self, String> {
        Ok(Sleeper(config))
    }

    fn on_request(&self, _request: Request) -> RequestAction {
        std::thread::sleep(std::time::Duration::from_millis(self.0.ms));
        RequestAction::Proceed(Proceed::unchanged().set_header("x-slept", &self.0.ms.to_string()))
    }
}

export_plugin!(Sleeper);
