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
    let mut build = match toolchain(workspace, &target_dir) {
        Toolchain::Current => {
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        }
        Toolchain::Pinned(channel) => {
            let mut c = Command::new("rustup");
            c.args(["run", &channel, "cargo"]);
            for var in ["RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "CARGO"] {
                c.env_remove(var);
            }
            c
        }
    };
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

/// Which toolchain builds the plugins.
enum Toolchain {
    /// The one building weir.
    Current,
    /// The one rust-toolchain.toml pins, when the current one has no wasm32-wasip2 and
    /// rustup cannot add it (a nightly used for fuzzing, say).
    Pinned(String),
}

/// rust-toolchain.toml lists wasm32-wasip2, but rustup adds listed targets only when it
/// installs the toolchain; with the toolchain already there, add the target here so that
/// the README's commands stay the only set-up.
fn toolchain(workspace: &Path, target_dir: &Path) -> Toolchain {
    // The build scripts of `host` and `tests` run at once: one adds the target, the other
    // waits for it.
    std::fs::create_dir_all(target_dir).expect("create the plugins' target directory");
    let lock = std::fs::File::create(target_dir.join("rustup.lock")).expect("create a lock file");
    lock.lock().expect("lock the lock file");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if has_target(Command::new(&rustc)) {
        return Toolchain::Current;
    }
    let current = std::env::var("RUSTUP_TOOLCHAIN").ok();
    println!("cargo:warning=adding the wasm32-wasip2 target with rustup (rust-toolchain.toml lists it)");
    if rustup_add(current.as_deref()) {
        return Toolchain::Current;
    }
    let pinned = pinned_channel(workspace);
    if let Some(channel) = pinned.filter(|c| Some(c) != current.as_ref()) {
        let mut rustc = Command::new("rustup");
        rustc.args(["run", &channel, "rustc"]);
        if has_target(rustc) || rustup_add(Some(&channel)) {
            println!("cargo:warning=building the wasm plugins with the {channel} toolchain");
            return Toolchain::Pinned(channel);
        }
    }
    panic!(
        "the wasm32-wasip2 target is missing and rustup could not add it: \
         run `rustup target add wasm32-wasip2`"
    );
}

/// Whether the rustc that `command` runs has the wasm32-wasip2 standard library.
fn has_target(mut command: Command) -> bool {
    command
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .is_some_and(|root| Path::new(&root).join("lib/rustlib/wasm32-wasip2").is_dir())
}

fn rustup_add(toolchain: Option<&str>) -> bool {
    let mut add = Command::new("rustup");
    add.args(["target", "add", "wasm32-wasip2"]);
    if let Some(toolchain) = toolchain {
        add.args(["--toolchain", toolchain]);
    }
    add.status().is_ok_and(|s| s.success())
}

/// The `channel` of rust-toolchain.toml.
fn pinned_channel(workspace: &Path) -> Option<String> {
    let text = std::fs::read_to_string(workspace.join("rust-toolchain.toml")).ok()?;
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
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
