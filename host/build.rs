//! Builds the stock plugins of `plugins/` for wasm32-wasip2 and embeds them: every
//! directory there is a plugin crate whose package name is its stock name.

include!("wasm_build.rs");

fn main() {
    let workspace = workspace_root();
    let mut names: Vec<String> = std::fs::read_dir(workspace.join("plugins"))
        .expect("read plugins/")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            entry
                .path()
                .join("Cargo.toml")
                .is_file()
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    let out = build_wasm(&workspace, &names, &["Cargo.toml", "sdk", "wit", "plugins"]);
    let mut table = String::from(
        "/// Every stock plugin: its name and its component, sorted by name.\n\
         pub static STOCK: &[(&str, &[u8])] = &[\n",
    );
    for name in &names {
        let file = component_file(&out, name);
        table.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    table.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("stock.rs");
    std::fs::write(dest, table).expect("write the stock plugin table");
}
