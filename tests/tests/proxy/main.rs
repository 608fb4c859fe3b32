//! The proxy's path, through the real proxy in-process: forwarding, balancing, speaking to
//! servers, upgrades, the PROXY protocol, errors, retries and the queue, TLS termination.
//! One test binary per area, so that the suite links weir (and wasmtime) fewer times.

mod balancing;
mod errors;
mod forwarding;
mod proxy_protocol;
mod resilience;
mod tls;
mod upstream;
mod websocket;
