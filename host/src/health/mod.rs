//! Active health checks: one loop per checked server (`checker`) that probes it
//! (`probe`: a connect through upstream's connector, an HTTP request, or a plugin's
//! verdict on the response) and feeds the server's rise/fall state
//! ([`crate::upstream::health`]).

pub mod checker;
pub mod probe;
