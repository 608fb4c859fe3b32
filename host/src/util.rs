//! Small helpers shared by rooms that may not import each other (ARCHITECTURE.md).

use std::future::Future;
use std::pin::Pin;

/// Runs `f` on a thread of tokio's blocking pool and waits for it there, so that the
/// runtime's threads (with `threads = 1`, the one serving every connection) go on
/// meanwhile: for reading files and resolving names at a reload. A panic in `f` goes on
/// in the caller.
pub async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// `Box::new(make())`, with the box allocated first so that `make` can build the value in
/// it rather than on the stack, to be copied into the box after.
pub fn in_box<T>(make: impl FnOnce() -> T) -> Box<T> {
    Box::write(Box::new_uninit(), make())
}

/// `Box::pin(make())`, the future built in its box ([`in_box`]). A future that has not
/// started holds only its arguments (a few hundred bytes), but it is as large as its
/// largest state, and moving it copies all of that: kilobytes per request for a request's
/// future, copied by `Box::pin` into the box it was boxed to keep out of the connection.
/// Built in place, only the arguments are written.
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(in_box(make))
}

/// The SHA-256 of `bytes` in lowercase hex: plugin pins (`sha256 = ...`) and the
/// counter keys of plugin state that are too long to keep as they are.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lower_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
