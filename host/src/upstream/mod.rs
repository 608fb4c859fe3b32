//! Everything about reaching servers, once: backends and servers at run time (health,
//! admin state, weights, in-flight counts, the queue, the choice of a server), their
//! connection pools, the one connector that dials them (for requests and health checks
//! alike), and one exchange per request attempt over weir's own HTTP/1.1 client or
//! hyper's.
//!
//! Outside this module, code names what is re-exported here (and `health`'s state, read by
//! the statistics pages); the pool, the direct client and the bodies' insides stay within.

mod backend;
mod body;
pub mod connect;
mod direct;
mod exchange;
pub mod health;
mod pool;

pub use backend::{AdminError, AdminState, BackendRt, InFlight, QueueError, ServerRt, Slot};
pub use body::{BoxError, ClientBody, Received, ServerBody};
pub use exchange::{Connection, Outcome, Timer, TimerSlot, Unsent, send};
