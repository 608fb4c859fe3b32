//! Fuzzes the config parser and validator (`weir check`, start, reload): any text must
//! give a config or an error that says where, never a panic; a config that loads loads
//! the same way twice.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths (plugins, error files, certificates) resolve under a directory that
    // does not exist, so nothing on the machine is read.
    let base = Path::new("/nonexistent/weir-fuzz");
    match weir::Config::from_toml(text, base) {
        Ok(config) => {
            let again = weir::Config::from_toml(text, base).expect("the same text loads again");
            assert_eq!(format!("{config:?}"), format!("{again:?}"));
        }
        Err(e) => assert!(
            !e.to_string().trim().is_empty(),
            "an error must say what is wrong"
        ),
    }
});
