// Shared by the build scripts of `host` (the stock plugins) and `tests` (the test plugins):
// builds workspace packages for wasm32-wasip2 with a nested cargo, in a target directory of
// their own so the outer build's lock and flags are not in the way.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` for wasm32-wasip2 (profile `wasm-plugin`) and returns the directory
/// that holds the `.wasm` components. Cargo reruns the calling build script when anything
/// under `watched` (paths relative to the workspace) changes.
fn build_wasm(workspace: &Path, packages: &[String], watched: &[&str]) -> PathBuf {
    let target_dir = workspace.join("target").join("wasm-plugins");
    let out = target_dir.join("wasm32-wasip2").join("wasm-plugin");
    if packages.is_empty() {
        return out;
    }
    for dir in watched {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args([
            "build",
            "--profile",
            "wasm-plugin",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for package in packages {
        build.args(["-p", package]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the host target.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .expect("run cargo to build plugins for wasm32-wasip2");
    assert!(
        status.success(),
        "building {packages:?} for wasm32-wasip2 failed"
    );
    out
}

/// The component file cargo writes for a package.
fn component_file(out: &Path, package: &str) -> PathBuf {
    out.join(format!("{}.wasm", package.replace('-', "_")))
}

/// The workspace root, one level above the calling crate.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    manifest_dir
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}
