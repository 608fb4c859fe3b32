//! Access log lines to a syslog daemon: one datagram per line, on a local socket
//! (`/dev/log`) or over UDP, with an RFC 3164 or RFC 5424 header, severity info.

use std::io::Write;
use std::os::unix::net::UnixDatagram;

use crate::config::{Syslog, SyslogAddr, SyslogFormat};

enum Socket {
    /// Unbound, sending to the path each time: a daemon that is not there yet, or that
    /// restarts and makes its socket anew, loses lines meanwhile and stops nothing.
    Unix(UnixDatagram, std::path::PathBuf),
    Udp(std::net::UdpSocket),
}

/// Takes whole lines (as `writeln!` writes them) and sends each as a datagram.
pub struct SyslogWriter {
    cfg: Syslog,
    socket: Socket,
    pending: Vec<u8>,
    host: String,
    pid: u32,
}

fn connect(to: &SyslogAddr) -> std::io::Result<Socket> {
    Ok(match to {
        SyslogAddr::Unix(path) => {
            if !path.exists() {
                tracing::warn!(
                    "the syslog socket {} is not there (yet): access log lines are lost until it is",
                    path.display()
                );
            }
            Socket::Unix(UnixDatagram::unbound()?, path.clone())
        }
        SyslogAddr::Udp(addr) => {
            let bind: std::net::SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = std::net::UdpSocket::bind(bind)?;
            s.connect(addr)?;
            Socket::Udp(s)
        }
    })
}

impl SyslogWriter {
    /// Connects (a UDP address), or makes the socket that sends to a local path.
    pub fn new(cfg: &Syslog) -> std::io::Result<SyslogWriter> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        Ok(SyslogWriter {
            socket: connect(&cfg.to)?,
            cfg: cfg.clone(),
            pending: Vec::new(),
            host,
            pid: std::process::id(),
        })
    }

    /// Connects again (the daemon restarted); keeps the old socket when it cannot.
    pub fn reconnect(&mut self) {
        match connect(&self.cfg.to) {
            Ok(s) => self.socket = s,
            Err(e) => {
                tracing::error!("cannot reconnect to syslog: {e}; writing on to the old socket")
            }
        }
    }

    /// The header before a line.
    pub fn header(&self, now: std::time::SystemTime) -> String {
        let pri = u32::from(self.cfg.facility) * 8 + 6;
        match self.cfg.format {
            SyslogFormat::Rfc3164 => {
                // `Dec  5 20:01:38`: the month's name, the day padded to two.
                let date = super::log::clf_date(now);
                let (day, rest) = date.split_at(2);
                let (month, rest) = rest[1..].split_at(3);
                let time = &rest[6..14];
                let day = day.trim_start_matches('0');
                format!("<{pri}>{month} {day:>2} {time} weir[{}]: ", self.pid)
            }
            SyslogFormat::Rfc5424 => format!(
                "<{pri}>1 {} {} weir {} - - ",
                super::log::iso_date(now),
                self.host,
                self.pid
            ),
        }
    }

    fn send(&mut self, line: &[u8]) {
        let mut datagram = self.header(std::time::SystemTime::now()).into_bytes();
        datagram.extend_from_slice(line);
        // A daemon that is away loses the line, as with HAProxy; the request never waits.
        let _ = match &self.socket {
            Socket::Unix(s, path) => s.send_to(&datagram, path),
            Socket::Udp(s) => s.send(&datagram),
        };
    }
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.send(&line[..line.len() - 1]);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn headers_follow_rfc_3164_and_5424() {
        let dir = std::env::temp_dir().join(format!("weir-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("log");
        let daemon = UnixDatagram::bind(&socket).unwrap();
        let mut cfg = Syslog {
            to: SyslogAddr::Unix(socket.clone()),
            facility: 16,
            format: SyslogFormat::Rfc3164,
        };
        let mut w = SyslogWriter::new(&cfg).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_796_500_898);
        assert_eq!(
            w.header(t),
            format!("<134>Dec  5 20:01:38 weir[{}]: ", std::process::id())
        );
        writeln!(w, "a line").unwrap();
        writeln!(w, "two\nlines").unwrap();
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = daemon.recv(&mut buf).unwrap();
            let d = String::from_utf8_lossy(&buf[..n]).into_owned();
            got.push(d.rsplit(": ").next().unwrap().to_owned());
        }
        assert_eq!(got, ["a line", "two", "lines"]);
        cfg.format = SyslogFormat::Rfc5424;
        cfg.facility = 3;
        let w = SyslogWriter::new(&cfg).unwrap();
        assert!(
            w.header(t).starts_with("<30>1 2026-12-05T20:01:38.000Z "),
            "{}",
            w.header(t)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
