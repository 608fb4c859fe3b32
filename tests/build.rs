//! Builds the plugins the integration tests load (the fixture and the example canary)
//! for wasm32-wasip2, in a target directory of their own, and tells the tests where the
//! components are through `WEIR_FIXTURE_WASM` and `WEIR_CANARY_WASM`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf();
    let target_dir = workspace.join("target").join("wasm-plugins");
    for watched in ["sdk", "wit", "tests/plugins", "examples/plugins"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args([
            "build",
            "--profile",
            "wasm-plugin",
            "--target",
            "wasm32-wasip2",
            "-p",
            "weir-test-plugin",
            "-p",
            "canary",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags and wrappers (clippy, coverage) are for the host target.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .expect("run cargo for the wasm32-wasip2 plugins");
    assert!(
        status.success(),
        "building the test plugins for wasm32-wasip2 failed"
    );
    let out = target_dir.join("wasm32-wasip2").join("wasm-plugin");
    println!(
        "cargo:rustc-env=WEIR_FIXTURE_WASM={}",
        out.join("weir_test_plugin.wasm").display()
    );
    println!(
        "cargo:rustc-env=WEIR_CANARY_WASM={}",
        out.join("canary.wasm").display()
    );
}
