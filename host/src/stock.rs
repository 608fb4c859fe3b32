//! The stock plugins of `plugins/`, built for wasm32-wasip2 by `host/build.rs` and
//! embedded in the binary: `stock = "<name>"` in a `[plugin.<name>]` section.

include!(concat!(env!("OUT_DIR"), "/stock.rs"));

/// A stock plugin's canonical name and component, by name.
pub fn find(name: &str) -> Option<(&'static str, &'static [u8])> {
    STOCK.iter().copied().find(|(n, _)| *n == name)
}

/// The names of the stock plugins, in alphabetical order.
pub fn names() -> impl Iterator<Item = &'static str> {
    STOCK.iter().map(|(n, _)| *n)
}
