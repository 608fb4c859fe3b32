use super::*;

#[test]
fn a_target_knows_its_written_length() {
    for text in [
        "/",
        "/a/b?x=1&y",
        "/?",
        "*",
        "http://example.com:8080/p?q",
        "https://example.com",
        "example.com:443",
    ] {
        let target = Target::Uri(text.parse().unwrap());
        assert_eq!(target.written_len(), target.to_string().len(), "{text}");
    }
}

/// A writer that takes its time, as a slow disk or a full pipe would.
#[derive(Clone, Default)]
struct Slow(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Slow {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(20));
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn flush_waits_for_the_lines_already_emitted() {
    let out = Slow::default();
    let log = AccessLog::to_writer(out.clone());
    let tx = log.tx.as_ref().unwrap();
    for i in 0..5 {
        tx.send(Message::Line(format!("line {i}"))).unwrap();
    }
    log.flush(Duration::from_secs(10));
    let written = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert_eq!(written.lines().count(), 5, "{written}");
    assert!(written.ends_with("line 4\n"), "{written}");
}

#[test]
fn dates_render_in_utc() {
    let t = UNIX_EPOCH + Duration::from_millis(1_795_325_400_123);
    assert_eq!(clf_date(t), "22/Nov/2026:05:30:00.123");
    assert_eq!(iso_date(t), "2026-11-22T05:30:00.123Z");
    assert_eq!(
        iso_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00.000Z"
    );
}

fn record(format: LogFormat) -> LogRecord {
    LogRecord {
        client: "127.0.0.1:5000".parse().unwrap(),
        time: UNIX_EPOCH + Duration::from_millis(1_795_325_400_123),
        start: Instant::now(),
        frontend: "www".into(),
        backend: Some("app".into()),
        server: None,
        tq: Duration::from_millis(2),
        ti: Duration::from_millis(1),
        tw: Some(Duration::ZERO),
        tc: None,
        tr: None,
        status: 503,
        bytes: 57,
        head_bytes: 100,
        received: Default::default(),
        termination: *b"SC",
        retries: 3,
        redispatches: 0,
        tally: Default::default(),
        logged: true,
        load: Load {
            process: 4,
            frontend: 3,
            backend: 2,
            server: 0,
        },
        queue_ahead: 1,
        method: Method::GET,
        uri: Target::Text("/x?y=1".into()),
        version: Version::HTTP_11,
        format,
    }
}

#[test]
fn text_line_follows_httplog() {
    let line = record(LogFormat::Text).line();
    assert!(
        line.starts_with("127.0.0.1:5000 [22/Nov/2026:05:30:00.123] www app/<NOSRV> 2/0/-1/-1/"),
        "{line}"
    );
    assert!(
        line.ends_with(" 503 57 SC 4/3/2/0/3 0/1 \"GET /x?y=1 HTTP/1.1\""),
        "{line}"
    );
}

#[test]
fn a_custom_format_writes_haproxys_variables() {
    let pieces = crate::config::custom_log_format_for_tests(
        "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r 100%%",
    );
    let line = record(LogFormat::Custom(pieces.into())).line();
    assert!(
        line.starts_with("127.0.0.1:5000 [22/Nov/2026:05:30:00.123] www app/<NOSRV> 1/0/-1/-1 503 157 - - SC-- 4/3/2/0/3 0/1 \"GET /x?y=1 HTTP/1.1\" 100%"),
        "{line}"
    );
}

#[test]
fn a_request_ended_before_its_response_has_status_minus_one() {
    let mut r = record(LogFormat::Text);
    r.status = 0;
    r.termination = *b"CH";
    assert!(r.line().contains(" -1 57 CH "), "{}", r.line());
}

#[test]
fn json_line_has_every_field() {
    let v: serde_json::Value = serde_json::from_str(&record(LogFormat::Json).line()).unwrap();
    assert_eq!(v["server"], "<NOSRV>");
    assert_eq!(v["tc"], -1);
    assert_eq!(v["status"], 503);
    assert_eq!(v["termination"], "SC");
    assert_eq!(
        [&v["actconn"], &v["feconn"], &v["beconn"], &v["srv_conn"]],
        [4, 3, 2, 0]
    );
    assert_eq!(
        (&v["srv_queue"], &v["backend_queue"]),
        (&0.into(), &1.into())
    );
    assert_eq!(v["version"], "HTTP/1.1");
}
