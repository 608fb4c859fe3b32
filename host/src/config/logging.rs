//! The access log's settings: where lines go (stderr, a file, syslog) and their format,
//! HAProxy's `log-format` variables among them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::validate;

/// Where access log lines go (`[global] access_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stderr,
    Off,
    /// Appended to; reopened on SIGUSR1, for log rotation.
    File(PathBuf),
    /// A syslog daemon, one datagram per line.
    Syslog(Syslog),
}

/// `access_log = { syslog = "/dev/log" | "udp://host:port", facility, format }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syslog {
    pub to: SyslogAddr,
    /// 0 (kern) to 23 (local7); local0 (16) by default.
    pub facility: u8,
    pub format: SyslogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddr {
    /// A local socket (`/dev/log`).
    Unix(PathBuf),
    Udp(SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    /// `<PRI>Mmm dd hh:mm:ss weir[PID]: line`, what local syslog daemons take.
    Rfc3164,
    /// `<PRI>1 TIMESTAMP HOST weir PID - - line`.
    Rfc5424,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    /// A string with HAProxy's `%` variables (those weir has; see [`LogVar`]).
    Custom(Arc<[LogPiece]>),
}

/// A piece of a custom log format: text as written, or a variable (`%{+Q}r`: quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogPiece {
    Text(String),
    Var(LogVar, bool),
}

/// HAProxy's log-format variables that weir has, by their names there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVar {
    ClientIp,
    ClientPort,
    Date,
    Frontend,
    Backend,
    Server,
    /// Ti, TR, Tq, Tw, Tc, Tr, Ta, Tt: ms, -1 for a phase not reached.
    Ti,
    TR,
    Tq,
    Tw,
    Tc,
    Tr,
    Ta,
    Tt,
    Status,
    Bytes,
    BytesIn,
    /// CC and CS: weir captures no cookie, so `-` as HAProxy writes then.
    CapturedCookie,
    Termination,
    /// `tsc`: the termination state and `--` (weir's cookie persistence is a plugin's).
    TerminationCookie,
    Retries,
    /// ac, fc, bc, sc: client connections open on the process and on the frontend,
    /// requests on the backend (in flight and queued) and in flight on the server.
    ActConn,
    FeConn,
    BeConn,
    SrvConn,
    /// sq, bq: requests ahead of this one when it joined the server's queue (always 0:
    /// weir queues per backend) and the backend's.
    SrvQueue,
    BackendQueue,
    RequestLine,
    Method,
    Uri,
    Version,
}

/// Syslog's facilities by number, as `access_log`'s `facility` names them.
pub const SYSLOG_FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "cron2", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Why `text` is not a `log_format` weir takes (an unknown `%` variable, say), if it is not.
pub fn log_format_problem(text: &str) -> Option<String> {
    validate::custom_log_format(text).err()
}

/// The pieces of a custom log format, for tests of other modules.
#[doc(hidden)]
pub fn custom_log_format_for_tests(text: &str) -> Vec<LogPiece> {
    validate::custom_log_format(text).expect("a valid format")
}

impl LogVar {
    pub fn by_name(name: &str) -> Option<LogVar> {
        use LogVar::*;
        Some(match name {
            "ci" => ClientIp,
            "cp" => ClientPort,
            "tr" | "t" | "trg" => Date,
            "ft" | "f" => Frontend,
            "b" => Backend,
            "s" => Server,
            "Ti" => Ti,
            "TR" => TR,
            "Tq" => Tq,
            "Tw" => Tw,
            "Tc" => Tc,
            "Tr" => Tr,
            "Ta" => Ta,
            "Tt" => Tt,
            "ST" => Status,
            "B" => Bytes,
            "U" => BytesIn,
            "CC" | "CS" => CapturedCookie,
            "ts" => Termination,
            "tsc" => TerminationCookie,
            "rc" => Retries,
            "ac" => ActConn,
            "fc" => FeConn,
            "bc" => BeConn,
            "sc" => SrvConn,
            "sq" => SrvQueue,
            "bq" => BackendQueue,
            "r" => RequestLine,
            "HM" => Method,
            "HU" => Uri,
            "HV" => Version,
            _ => return None,
        })
    }
}
