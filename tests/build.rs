//! Builds the plugins the integration tests load (the fixture, the sleeper and the
//! example canary) for wasm32-wasip2 and tells the tests where the components are through
//! `WEIR_FIXTURE_WASM`, `WEIR_SLEEPER_WASM` and `WEIR_CANARY_WASM`.

include!("../host/wasm_build.rs");

fn main() {
    let workspace = workspace_root();
    let packages = [
        "weir-test-plugin".to_owned(),
        "weir-test-sleeper".to_owned(),
        "canary".to_owned(),
    ];
    let out = build_wasm(
        &workspace,
        &packages,
        &[
            "Cargo.toml",
            "sdk",
            "wit",
            "tests/plugins",
            "examples/plugins",
        ],
    );
    println!(
        "cargo:rustc-env=WEIR_FIXTURE_WASM={}",
        component_file(&out, "weir-test-plugin").display()
    );
    println!(
        "cargo:rustc-env=WEIR_SLEEPER_WASM={}",
        component_file(&out, "weir-test-sleeper").display()
    );
    println!(
        "cargo:rustc-env=WEIR_CANARY_WASM={}",
        component_file(&out, "canary").display()
    );
}
