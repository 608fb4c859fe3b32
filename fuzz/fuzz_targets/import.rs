//! Fuzzes `weir import`: any text must give TOML and notes, or an error with a line number
//! inside the file, never a panic; and what it writes must be TOML that parses.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "FUZZ").then(|| "a b".to_owned());
    match weir::import::import(text, "fuzz.cfg", &env) {
        Ok(imported) => {
            let parsed: Result<toml::Table, _> = toml::from_str(&imported.toml);
            assert!(
                parsed.is_ok(),
                "not TOML: {:?}\n{}",
                parsed.err(),
                imported.toml
            );
            let lines = text.lines().count().max(1);
            assert!(imported.notes.iter().all(|n| (1..=lines).contains(&n.line)));
        }
        Err(e) => assert!((1..=text.lines().count().max(1)).contains(&e.line), "{e}"),
    }
});
