//! bench/run is run by hand (it needs HAProxy, nginx and wrk, and takes half an hour);
//! here it is only checked to be well-formed, and its report to be computed right.

use std::path::PathBuf;
use std::process::Command;

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The script parses (`bash -n`) and its `--help` names each of `words`.
fn parses_and_explains_itself(name: &str, words: &[&str]) {
    let script = bench_dir().join(name);
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success(), "bash -n bench/{name}");
    let help = Command::new(&script).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for word in words {
        assert!(
            text.contains(word),
            "bench/{name} --help lacks {word}: {text}"
        );
    }
}

#[test]
fn the_script_parses_and_explains_itself() {
    parses_and_explains_itself(
        "run",
        &[
            "ROUNDS",
            "HAProxy",
            "PINGORA=",
            "SOZU=",
            "WEIR_PGO=",
            "bench/pgo",
        ],
    );
}

#[test]
fn the_tcp_script_parses_and_explains_itself() {
    parses_and_explains_itself("tcp", &["ROUNDS", "TRANSFER", "splice", "HAProxy"]);
}

#[test]
fn the_shadow_script_parses_and_explains_itself() {
    parses_and_explains_itself("shadow", &["ROUNDS", "shadow_cpu_seconds", "request"]);
}

#[test]
fn the_store_script_parses_and_explains_itself() {
    parses_and_explains_itself("store", &["ROUNDS", "redis-server", "exact"]);
}

#[test]
fn the_profile_script_parses_and_explains_itself() {
    parses_and_explains_itself(
        "profile",
        &[
            "PLUGINS",
            "perf",
            "WEIR_B",
            "COUNT",
            "CACHE",
            "SHADOW",
            "callgrind",
        ],
    );
}

#[test]
fn the_pgo_script_parses_and_explains_itself() {
    parses_and_explains_itself("pgo", &["PGO_DIR", "llvm-profdata", "WEIR_B"]);
}

#[test]
fn the_report_takes_medians_and_ratios_to_haproxy() {
    let dir = std::env::temp_dir().join(format!("weir-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut runs = String::new();
    for (target, rps, cpu, p99) in [
        ("haproxy", [100.0, 90.0, 110.0], Some(10.0), 2.0),
        ("weir", [50.0, 60.0, 40.0], Some(20.0), 1.0),
        ("direct", [300.0, 300.0, 300.0], None, 0.5),
        ("sozu", [80.0, 70.0, 75.0], Some(12.5), 4.0),
        ("nginx", [100.0, 100.0, 100.0], Some(8.0), 2.0),
        ("weir-pgo", [95.0, 100.0, 105.0], Some(9.0), 1.0),
    ] {
        for (round, r) in rps.iter().enumerate() {
            for conns in [50, 1] {
                runs.push_str(&serde_like(target, conns, round + 1, *r, cpu, p99));
                runs.push('\n');
            }
        }
    }
    std::fs::write(dir.join("runs.jsonl"), runs).unwrap();
    std::fs::write(
        dir.join("memory.json"),
        r#"{"weir": {"idle_kib": 1000, "with_1000_connections_kib": 5000, "with_10000_idle_kib": 9000, "hold_errors": 0},
            "haproxy": {"idle_kib": 800, "with_1000_connections_kib": 4000, "with_10000_idle_kib": 6000, "hold_errors": 12}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("soak.json"),
        r#"{"seconds": 600, "rss_start_kib": 900, "rss_samples_kib": [1000, 1050, 1020]}"#,
    )
    .unwrap();
    // Fixed-rate rounds: weir's p99 over HAProxy's is 0.5, 2.0 and 0.8 round by round
    // (median 0.8); with plugins, against HAProxy with the rules, 1.0 each round; the
    // profile-guided build with plugins 0.5 each round.
    let mut latency = String::new();
    for (round, hap, rules, weir, plugins) in [
        (1, 1.0, 2.0, 0.5, 2.0),
        (2, 1.0, 1.0, 2.0, 1.0),
        (3, 2.0, 3.0, 1.6, 3.0),
    ] {
        for (target, p99) in [
            ("haproxy", hap),
            ("haproxy-rules", rules),
            ("weir", weir),
            ("weir-plugins", plugins),
            ("weir-pgo-plugins", plugins / 2.0),
        ] {
            latency.push_str(&format!(
                r#"{{"target": "{target}", "round": {round}, "rate": 5000, "seconds": 10, "result": {{"requests": 50000, "errors": 0, "seconds": 10, "p50_ms": 0.1, "p90_ms": 0.2, "p99_ms": {p99}, "p999_ms": 3.0, "max_ms": 4.0, "late": 1}}}}"#
            ));
            latency.push('\n');
        }
    }
    std::fs::write(dir.join("latency.jsonl"), latency).unwrap();
    std::fs::write(dir.join("BENCHMARKS.md"), "# Benchmarks\n\nby hand\n").unwrap();
    let status = Command::new("python3")
        .arg(bench_dir().join("report.py"))
        .args([
            dir.join("runs.jsonl"),
            dir.join("memory.json"),
            dir.join("soak.json"),
            dir.join("latency.jsonl"),
        ])
        .args(["2 cores", "versions", "bench/run"])
        .args([dir.join("results.json"), dir.join("BENCHMARKS.md")])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(md.starts_with("# Benchmarks\n\nby hand\n"), "{md}");
    // Medians: HAProxy 100 requests/s, weir 50: half; CPU twice; p99 half.
    assert!(
        md.contains("| weir, no plugins | 50 | 0.50 | 1.000 | 1.000 | 0.50 | 20.0 | 2.00 | 0 |"),
        "{md}"
    );
    assert!(
        md.contains("CPU per request against HAProxy: 2.00× (at most 1.00×) — missed"),
        "{md}"
    );
    assert!(
        md.contains("p99 at 1 connection against HAProxy: 0.50× (at most 1.00×) — met"),
        "{md}"
    );
    assert!(
        md.contains("| Sozu | 75 | 0.75 | 1.000 | 4.000 | 2.00 | 12.5 | 1.25 | 0 |"),
        "{md}"
    );
    assert!(
        md.contains("| weir, no plugins | 1000 | 5000 | 9000 |"),
        "{md}"
    );
    assert!(
        md.contains("| HAProxy | 800 | 4000 | 6000 (12 not held) |"),
        "{md}"
    );
    assert!(
        md.contains("| weir, no plugins | 0.100 | 1.600 | 3.000 | 0.80 | 0.50–2.00 | 3 | 0 |"),
        "{md}"
    );
    assert!(
        md.contains(
            "p99 at a fixed rate against HAProxy (median of rounds): 0.80× (at most 1.00×) — met"
        ),
        "{md}"
    );
    assert!(
        md.contains("| weir, 3 stock plugins | 0.100 | 2.000 | 3.000 | 1.00 (×HAProxy, same 3 rules) | 1.00–1.00 | 3 | 0 |"),
        "{md}"
    );
    // Item 0's peer is the better of HAProxy and nginx (nginx here: 8 µs).
    assert!(
        md.contains("weir, no plugins: CPU per request against the better of HAProxy and nginx: 2.50× (at most 1.00×) — missed"),
        "{md}"
    );
    // The profile-guided build: a row of its own and its own verdicts.
    assert!(
        md.contains("| weir, profile-guided build, no plugins | 100 | 1.00 | 1.000 | 1.000 | 0.50 | 9.0 | 0.90 | 0 |"),
        "{md}"
    );
    assert!(
        md.contains("weir, profile-guided build, no plugins: CPU per request against HAProxy: 0.90× (at most 1.00×) — met; round by round 0.90–0.90×, median 0.90×, within in 3 of 3"),
        "{md}"
    );
    assert!(
        md.contains("weir, profile-guided build, no plugins: CPU per request against the better of HAProxy and nginx: 1.12× (at most 1.00×) — missed"),
        "{md}"
    );
    assert!(
        md.contains("weir, profile-guided build, 3 plugins: p99 at a fixed rate against HAProxy with the same 3 rules (median of rounds): 0.50× (at most 1.00×) — met"),
        "{md}"
    );
    assert!(
        md.contains("The profile-guided build is bench/pgo's"),
        "{md}"
    );
    // The soak's growth counts from its first sample under load.
    assert!(
        md.contains("RSS 900 KiB before the load, 1000 KiB at the first sample (10 s in), 1050 KiB at most (5.0% growth from the first sample"),
        "{md}"
    );
}

/// One run as bench/run records it.
fn serde_like(
    target: &str,
    conns: u32,
    round: usize,
    rps: f64,
    cpu: Option<f64>,
    p99: f64,
) -> String {
    let cpu = cpu.map_or("null".to_string(), |c| c.to_string());
    format!(
        r#"{{"target": "{target}", "connections": {conns}, "round": {round}, "requests_per_s": {rps}, "p50_ms": 1.0, "p99_ms": {p99}, "requests": 1000, "errors": 0, "socket_errors": "", "cpu_us_per_request": {cpu}}}"#
    )
}
