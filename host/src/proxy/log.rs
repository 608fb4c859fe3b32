//! The access log: one line per request in the spirit of HAProxy's httplog, or JSON.
//!
//! Text: `client [date] frontend backend/server Tq/Tw/Tc/Tr/Tt status bytes termination
//! ac/fc/bc/sc/rc sq/bq "request"` where Tq is the wait for the request (including
//! keep-alive idle time), Tw the time to choose a server, Tc the connect time, Tr the
//! server's time to its response head, and Tt the total, in milliseconds; -1 marks a
//! phase that was not reached (and a status never sent). ac/fc/bc/sc/rc and sq/bq are
//! HAProxy's connection counts, retries and queue positions ([`Load`]).
//! Lines are written by a dedicated thread so a slow stderr never stalls a request.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Version};

use crate::config::{LogFormat, LogPiece, LogVar};
use crate::stats::{Counters, Ended};

/// Lines buffered before new ones are dropped (with a warning) rather than slowing requests.
const QUEUE: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct LogRecord {
    pub client: SocketAddr,
    pub time: SystemTime,
    pub start: Instant,
    pub frontend: Arc<str>,
    pub backend: Option<Arc<str>>,
    pub server: Option<Arc<str>>,
    pub tq: Duration,
    /// The part of `tq` the connection was idle before the head's first byte (keep-alive).
    pub ti: Duration,
    pub tw: Option<Duration>,
    pub tc: Option<Duration>,
    pub tr: Option<Duration>,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// The response head's size as HTTP/1.1 writes it, for HAProxy's %B (which counts
    /// heads and bodies); taken only for a logged request.
    pub head_bytes: u64,
    /// Request bytes received (the head as sent on HTTP/1.1 and the body read so far),
    /// and whether reading the body failed.
    pub received: Arc<crate::upstream::Received>,
    pub termination: [u8; 2],
    pub retries: u32,
    /// Retries that went to another server.
    pub redispatches: u32,
    /// The counters this request adds to when it ends.
    pub tally: Tally,
    /// A line is written for it (the frontend's access log is on): [`Self::load`] is
    /// taken only then.
    pub logged: bool,
    /// What was open when its response began (or it ended without one).
    pub load: Load,
    /// Requests ahead of it when it joined the backend's queue (HAProxy's %bq).
    pub queue_ahead: u32,
    pub method: Method,
    /// The request target as the client wrote it, formatted only when a line is written.
    pub uri: Target,
    pub version: Version,
    pub format: LogFormat,
}

/// The counters a request adds to when it ends: its frontend's, and those of the backend
/// and server it went to, once known.
#[derive(Clone, Default)]
pub struct Tally {
    pub frontend: Option<Arc<Counters>>,
    pub backend: Option<Arc<Counters>>,
    pub server: Option<Arc<Counters>>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tally")
    }
}

impl Tally {
    pub fn count(&self, r: &LogRecord) {
        self.count_at(r, Instant::now());
    }

    /// [`Self::count`], for a request that ended at `end`.
    pub fn count_at(&self, r: &LogRecord, end: Instant) {
        let ended = Ended {
            took: r.tq + end.saturating_duration_since(r.start),
            bytes_in: r.received.bytes.load(Ordering::Relaxed),
            bytes_out: r.bytes,
            status: r.status,
            termination: r.termination,
            retries: r.retries,
            redispatches: r.redispatches,
        };
        for c in [&self.frontend, &self.backend, &self.server]
            .into_iter()
            .flatten()
        {
            c.add(&ended);
        }
    }
}

/// What was open when a request's response began, for HAProxy's %ac/%fc/%bc/%sc
/// (HAProxy takes them when the line is written; the difference is the requests that
/// began or ended during this one's body).
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Client connections open on the process (%ac) and on the frontend (%fc).
    pub process: u64,
    pub frontend: u64,
    /// Requests on the backend, in flight or queued (%bc), and in flight on the server
    /// (%sc); 0 before one was chosen.
    pub backend: u64,
    pub server: u64,
}

/// A request target for the log: parsed, or the text of a head that was refused
/// unparsed.
#[derive(Debug, Clone)]
pub enum Target {
    Uri(http::Uri),
    Text(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Uri(uri) => uri.fmt(f),
            Target::Text(text) => f.write_str(text),
        }
    }
}

impl Target {
    /// Its length as written, without formatting it.
    pub fn written_len(&self) -> usize {
        match self {
            Target::Uri(uri) => {
                uri.scheme_str().map_or(0, |s| s.len() + "://".len())
                    + uri.authority().map_or(0, |a| a.as_str().len())
                    + uri.path().len()
                    + uri.query().map_or(0, |q| 1 + q.len())
            }
            Target::Text(text) => text.len(),
        }
    }
}

fn ms(d: Option<Duration>) -> i64 {
    d.map_or(-1, |d| d.as_millis() as i64)
}

impl LogRecord {
    /// The status sent, or -1 when the request ended before any (as HAProxy writes it).
    fn status(&self) -> i32 {
        match self.status {
            0 => -1,
            s => i32::from(s),
        }
    }

    /// A line in a format with HAProxy's `%` variables.
    fn custom(&self, pieces: &[LogPiece], tt: Duration) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(160);
        for piece in pieces {
            let (var, quoted) = match piece {
                LogPiece::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                LogPiece::Var(v, q) => (*v, *q),
            };
            if quoted {
                out.push('"');
            }
            let ms_of = |d: Duration| d.as_millis() as i64;
            let _ = match var {
                LogVar::ClientIp => write!(out, "{}", self.client.ip()),
                LogVar::ClientPort => write!(out, "{}", self.client.port()),
                LogVar::Date => write!(out, "{}", clf_date(self.time)),
                LogVar::Frontend => write!(out, "{}", self.frontend),
                LogVar::Backend => write!(out, "{}", self.backend.as_deref().unwrap_or("<NOSRV>")),
                LogVar::Server => write!(out, "{}", self.server.as_deref().unwrap_or("<NOSRV>")),
                LogVar::Ti => write!(out, "{}", ms_of(self.ti)),
                LogVar::TR => write!(out, "{}", ms_of(self.tq.saturating_sub(self.ti))),
                LogVar::Tq => write!(out, "{}", ms_of(self.tq)),
                LogVar::Tw => write!(out, "{}", ms(self.tw)),
                LogVar::Tc => write!(out, "{}", ms(self.tc)),
                LogVar::Tr => write!(out, "{}", ms(self.tr)),
                LogVar::Ta => write!(out, "{}", ms_of(tt.saturating_sub(self.ti))),
                LogVar::Tt => write!(out, "{}", ms_of(tt)),
                LogVar::Status => write!(out, "{}", self.status()),
                LogVar::Bytes => write!(out, "{}", self.head_bytes + self.bytes),
                LogVar::BytesIn => write!(out, "{}", self.received.bytes.load(Ordering::Relaxed)),
                LogVar::CapturedCookie => write!(out, "-"),
                LogVar::Termination => {
                    write!(out, "{}", String::from_utf8_lossy(&self.termination))
                }
                LogVar::TerminationCookie => {
                    write!(out, "{}--", String::from_utf8_lossy(&self.termination))
                }
                LogVar::Retries => write!(out, "{}", self.retries),
                LogVar::ActConn => write!(out, "{}", self.load.process),
                LogVar::FeConn => write!(out, "{}", self.load.frontend),
                LogVar::BeConn => write!(out, "{}", self.load.backend),
                LogVar::SrvConn => write!(out, "{}", self.load.server),
                LogVar::SrvQueue => write!(out, "0"),
                LogVar::BackendQueue => write!(out, "{}", self.queue_ahead),
                LogVar::RequestLine => {
                    write!(out, "{} {} {:?}", self.method, self.uri, self.version)
                }
                LogVar::Method => write!(out, "{}", self.method),
                LogVar::Uri => write!(out, "{}", self.uri),
                LogVar::Version => write!(out, "{:?}", self.version),
            };
            if quoted {
                out.push('"');
            }
        }
        out
    }

    pub fn line(&self) -> String {
        let tt = self.tq + self.start.elapsed();
        let backend = self.backend.as_deref().unwrap_or("<NOSRV>");
        let server = self.server.as_deref().unwrap_or("<NOSRV>");
        let termination = String::from_utf8_lossy(&self.termination);
        match &self.format {
            LogFormat::Custom(pieces) => self.custom(pieces, tt),
            LogFormat::Text => format!(
                "{} [{}] {} {}/{} {}/{}/{}/{}/{} {} {} {} {}/{}/{}/{}/{} 0/{} \"{} {} {:?}\"",
                self.client,
                clf_date(self.time),
                self.frontend,
                backend,
                server,
                self.tq.as_millis(),
                ms(self.tw),
                ms(self.tc),
                ms(self.tr),
                tt.as_millis(),
                self.status(),
                self.bytes,
                termination,
                self.load.process,
                self.load.frontend,
                self.load.backend,
                self.load.server,
                self.retries,
                self.queue_ahead,
                self.method,
                self.uri,
                self.version,
            ),
            LogFormat::Json => serde_json::json!({
                "client": self.client.to_string(),
                "time": iso_date(self.time),
                "frontend": &*self.frontend,
                "backend": backend,
                "server": server,
                "tq": self.tq.as_millis() as i64,
                "ti": self.ti.as_millis() as i64,
                "treq": self.tq.saturating_sub(self.ti).as_millis() as i64,
                "ta": tt.saturating_sub(self.ti).as_millis() as i64,
                "tw": ms(self.tw),
                "tc": ms(self.tc),
                "tr": ms(self.tr),
                "tt": tt.as_millis() as i64,
                "status": self.status(),
                "bytes": self.bytes,
                "termination": termination,
                "actconn": self.load.process,
                "feconn": self.load.frontend,
                "beconn": self.load.backend,
                "srv_conn": self.load.server,
                "retries": self.retries,
                "srv_queue": 0,
                "backend_queue": self.queue_ahead,
                "method": self.method.as_str(),
                "uri": self.uri.to_string(),
                "version": format!("{:?}", self.version),
            })
            .to_string(),
        }
    }
}

/// Where access log lines go. Cloning shares the writer.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Message>>,
    dropped: Arc<AtomicU64>,
}

/// What the writer thread is asked to do, in order.
enum Message {
    Line(String),
    /// Open the log file again (it was moved away by log rotation).
    Reopen,
    /// Write what came before, flush, and say so.
    Flush(SyncSender<()>),
}

/// Where the writer thread writes.
enum Sink {
    Writer(Box<dyn Write + Send>),
    File(std::path::PathBuf, std::fs::File),
    Syslog(super::syslog::SyslogWriter),
}

impl Sink {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Writer(w) => w,
            Sink::File(_, f) => f,
            Sink::Syslog(s) => s,
        }
    }

    fn reopen(&mut self) {
        if let Sink::Syslog(s) = self {
            s.reconnect();
        }
        if let Sink::File(path, file) = self {
            let _ = file.flush();
            match append(path) {
                Ok(new) => *file = new,
                Err(e) => tracing::error!(
                    "cannot reopen the access log {}: {e}; writing on to the old file",
                    path.display()
                ),
            }
        }
    }
}

fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl AccessLog {
    pub fn disabled() -> Self {
        Self {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn stderr() -> Self {
        Self::to_writer(std::io::stderr())
    }

    /// Lines go to `writer` from a thread of their own, flushed whenever the queue is empty.
    pub fn to_writer<W: Write + Send + 'static>(writer: W) -> Self {
        Self::spawn(Sink::Writer(Box::new(writer)))
    }

    /// Lines are appended to the file at `path` (created if missing); [`Self::reopen`]
    /// opens it again, for log rotation.
    pub fn file(path: &std::path::Path) -> std::io::Result<Self> {
        let file = append(path)?;
        Ok(Self::spawn(Sink::File(path.to_path_buf(), file)))
    }

    /// The access log a config asks for.
    pub fn for_target(target: &crate::config::AccessLogTarget) -> std::io::Result<Self> {
        use crate::config::AccessLogTarget;
        match target {
            AccessLogTarget::Stderr => Ok(Self::stderr()),
            AccessLogTarget::Off => Ok(Self::disabled()),
            AccessLogTarget::File(path) => Self::file(path),
            AccessLogTarget::Syslog(cfg) => Ok(Self::spawn(Sink::Syslog(
                super::syslog::SyslogWriter::new(cfg)?,
            ))),
        }
    }

    /// The access log `target` asks for, counting its dropped lines with this one's (a
    /// counter that never goes back when a reload moves the log).
    pub fn retargeted(&self, target: &crate::config::AccessLogTarget) -> std::io::Result<Self> {
        let mut log = Self::for_target(target)?;
        log.dropped = Arc::clone(&self.dropped);
        Ok(log)
    }

    fn spawn(mut sink: Sink) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Message>(QUEUE);
        std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn(move || {
                let handle = |sink: &mut Sink, message| match message {
                    Message::Line(line) => {
                        let _ = writeln!(sink.writer(), "{line}");
                    }
                    Message::Reopen => sink.reopen(),
                    Message::Flush(done) => {
                        let _ = sink.writer().flush();
                        let _ = done.send(());
                    }
                };
                while let Ok(message) = rx.recv() {
                    handle(&mut sink, message);
                    while let Ok(message) = rx.try_recv() {
                        handle(&mut sink, message);
                    }
                    let _ = sink.writer().flush();
                }
            })
            .expect("spawn the access log thread");
        Self {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Opens the log file again, after the lines already queued are written to the old
    /// one. Nothing to do for stderr.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Reopen);
        }
    }

    /// Waits until the lines emitted so far are written and flushed, for at most
    /// `timeout`: before the process exits, which would lose the ones still queued.
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let deadline = Instant::now() + timeout;
        let (done, written) = mpsc::sync_channel(1);
        let mut message = Message::Flush(done);
        loop {
            match tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether lines are written at all (`access_log` is not "off").
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    pub fn emit(&self, record: &LogRecord) {
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(Message::Line(record.line())) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed);
            if dropped.is_multiple_of(1000) {
                tracing::warn!(
                    "the access log cannot keep up: {} lines dropped so far",
                    dropped + 1
                );
            }
        }
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    min: u64,
    sec: u64,
    millis: u32,
}

fn parts(t: SystemTime) -> Parts {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    Parts {
        year,
        month,
        day,
        hour: rem / 3600,
        min: rem % 3600 / 60,
        sec: rem % 60,
        millis: since.subsec_millis(),
    }
}

/// `22/Nov/2026:05:30:00.123` (UTC), as HAProxy writes accept dates.
pub fn clf_date(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(t);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02}.{:03}",
        p.day,
        MONTHS[(p.month - 1) as usize],
        p.year,
        p.hour,
        p.min,
        p.sec,
        p.millis
    )
}

/// `2026-11-22T05:30:00.123Z`.
pub fn iso_date(t: SystemTime) -> String {
    let p = parts(t);
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.year, p.month, p.day, p.hour, p.min, p.sec, p.millis
    )
}

#[cfg(test)]
mod tests;
