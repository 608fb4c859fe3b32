//! `weir import` on the corpus in tests/import/: for each `NAME.cfg`, the TOML must be
//! `NAME.toml` and the report `NAME.report` (exit 0 when the report is empty, 2 when not),
//! and `weir check` must accept the TOML. `WEIR_BLESS=1 cargo test -p weir --test import`
//! rewrites the golden files from what the import writes now: read the diff before
//! committing it.
//!
//! The differential tests (`--ignored`: they need Debian's haproxy) run HAProxy on a
//! corpus file and weir on its import, against the same servers, and compare what the
//! same requests get from both.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/import")
}

/// The environment the corpus files that use `${VAR}` expect.
const ENV: [(&str, &str); 4] = [
    ("CONNECT_TIMEOUT", "4s"),
    ("LISTEN_ADDR", "127.0.0.1"),
    ("LISTEN_PORT", "8080"),
    ("APP_SERVER", "10.0.0.9:8080"),
];

fn import(dir: &Path, file: &str, env: &[(&str, &str)]) -> Output {
    Command::new(WEIR)
        .current_dir(dir)
        .args(["import", file])
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn the_corpus_imports_as_its_golden_files_say_and_weir_check_accepts_it() {
    let dir = corpus();
    let bless = std::env::var_os("WEIR_BLESS").is_some();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".cfg").then_some(name)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus has {} files", files.len());
    let scratch = std::env::temp_dir().join(format!("weir-import-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for sub in ["certs", "errors"] {
        let _ = std::os::unix::fs::symlink(dir.join(sub), scratch.join(sub));
    }
    let mut failures = Vec::new();
    for file in &files {
        let stem = file.trim_end_matches(".cfg");
        let out = import(&dir, file, &ENV);
        let (toml, report) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        let (toml_path, report_path) = (
            dir.join(format!("{stem}.toml")),
            dir.join(format!("{stem}.report")),
        );
        if bless {
            std::fs::write(&toml_path, &toml).unwrap();
            std::fs::write(&report_path, &report).unwrap();
        }
        let expected = std::fs::read_to_string(&toml_path).unwrap_or_default();
        let expected_report = std::fs::read_to_string(&report_path).unwrap_or_default();
        if toml != expected {
            failures.push(format!(
                "{file}: the TOML differs from {stem}.toml:\n{toml}"
            ));
        }
        if report != expected_report {
            failures.push(format!(
                "{file}: the report differs from {stem}.report:\n{report}"
            ));
        }
        let code = if expected_report.is_empty() { 0 } else { 2 };
        if out.status.code() != Some(code) {
            failures.push(format!(
                "{file}: exit {:?}, expected {code}",
                out.status.code()
            ));
        }
        let written = scratch.join(format!("{stem}.toml"));
        std::fs::write(&written, &toml).unwrap();
        let check = Command::new(WEIR)
            .args(["check", "--config"])
            .arg(&written)
            .output()
            .unwrap();
        if !check.status.success() {
            failures.push(format!(
                "{file}: weir check refuses the import: {}",
                String::from_utf8_lossy(&check.stderr)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `text` imported from a scratch file: exit code, stdout, stderr.
fn import_text(name: &str, text: &[u8]) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("weir-import-bad-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("haproxy.cfg"), text).unwrap();
    let out = import(&dir, "haproxy.cfg", &[]);
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_files_get_an_error_with_the_line_and_exit_1() {
    let cases: [(&str, &[u8], &str); 6] = [
        ("quote", b"global\n  maxconn 10\nfrontend a\n  bind \":80\n", "haproxy.cfg:4: unterminated double quote"),
        ("outside", b"bind :80\n", "haproxy.cfg:1: \"bind\" outside any section"),
        (
            "backend",
            b"frontend a\n  bind :80\n  use_backend nope if { path /x }\n  default_backend b\nbackend b\n  server s 10.0.0.1:80\n",
            "haproxy.cfg:3: no backend named \"nope\"",
        ),
        ("nul", b"global\n  maxconn\x0010\n", "haproxy.cfg:2: a NUL byte"),
        ("binary", b"global\n\xff\xfe\x00garbage", "haproxy.cfg:2: not UTF-8 text"),
        ("from", b"frontend a from nowhere\n  bind :80\n", "haproxy.cfg:1: no defaults section named \"nowhere\""),
    ];
    for (name, text, expected) in cases {
        let (code, stdout, stderr) = import_text(name, text);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}: {stdout}");
        assert!(stderr.starts_with(expected), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn a_ten_megabyte_file_is_read_whole_without_trouble() {
    let mut text = String::from(
        "defaults\n  mode http\nfrontend www\n  bind :8080\n  default_backend app\nbackend app\n",
    );
    let mut i = 0;
    while text.len() < 10 << 20 {
        text.push_str(&format!(
            "  server s{i} 10.{}.{}.{}:80 check weight 1\n",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        ));
        i += 1;
    }
    let (code, stdout, stderr) = import_text("big", text.as_bytes());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.matches("addr = ").count(), i);
}
