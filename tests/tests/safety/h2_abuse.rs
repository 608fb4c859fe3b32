//! HTTP/2 abuse: floods that cost a server work or memory for little on the client's side
//! end with a GOAWAY within a bounded number of frames, and other clients go on unharmed.

use std::time::Duration;

use weir_tests::h2raw::{self, End, frame};
use weir_tests::{MockServer, TestProxy, config};

const FLOOD: usize = 20_000;

async fn proxy() -> (MockServer, TestProxy) {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    (server, proxy)
}

/// Floods with `frames` and returns how the server ended it, and how many frames it read.
async fn flooded(
    proxy: &TestProxy,
    frames: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> (End, usize) {
    let (mut read, mut write) = h2raw::connect(proxy.addr()).await;
    let sender = tokio::spawn(async move { h2raw::flood(&mut write, frames).await });
    let end = h2raw::until_goaway(&mut read, Duration::from_secs(10)).await;
    drop(read);
    let sent = sender.await.unwrap();
    (end, sent)
}

/// Runs a flood on one connection while a well-behaved client keeps making requests on
/// another; the flood must end with a GOAWAY after at most `bound` frames from weir.
async fn flood_ends_with_goaway(
    name: &str,
    frames: impl Iterator<Item = Vec<u8>> + Send + 'static,
    bound: usize,
) {
    let (server, proxy) = proxy().await;
    let addr = proxy.addr();
    let bystander = tokio::spawn(async move {
        let mut client = weir_tests::Client::connect(addr).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..50 {
            let started = std::time::Instant::now();
            assert_eq!(client.get("/").await.status, 200);
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        slowest
    });
    let (end, _) = flooded(&proxy, frames).await;
    match end {
        End::GoAway { after, .. } => {
            assert!(after <= bound, "{name}: {after} frames before the GOAWAY")
        }
        other => panic!("{name}: the flood ended as {other:?}, not with a GOAWAY"),
    }
    let slowest = bystander.await.unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "{name}: another client waited {slowest:?}"
    );
    assert!(server.requests() >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_ends_with_goaway() {
    let frames = (0..FLOOD as u32).flat_map(|i| {
        let id = 1 + 2 * i;
        [
            frame(
                h2raw::HEADERS,
                h2raw::END_HEADERS | h2raw::END_STREAM,
                id,
                &h2raw::GET_BLOCK,
            ),
            frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()),
        ]
    });
    flood_ends_with_goaway("rapid reset", frames, 5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_ends_with_goaway() {
    // A header block that never ends, far past the 64 KiB header limit.
    let frames = std::iter::once(frame(h2raw::HEADERS, 0, 1, &h2raw::GET_BLOCK)).chain(
        (0..FLOOD).map(|_| frame(h2raw::CONTINUATION, 0, 1, &[0x40, 0x01, b'x', 0x01, b'y'])),
    );
    flood_ends_with_goaway("CONTINUATION", frames, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_flood_ends_with_goaway() {
    let post = [0x83, 0x86, 0x84, 0x01, 0x01, b'a'];
    let frames = std::iter::once(frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &post))
        .chain((0..FLOOD).map(|_| frame(h2raw::DATA, 0, 1, &[])));
    flood_ends_with_goaway("empty DATA", frames, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_ends_with_goaway() {
    let frames = (0..FLOOD as u64).map(|i| frame(h2raw::PING, 0, 0, &i.to_be_bytes()));
    // One acknowledgement per PING up to the limit, and the SETTINGS exchange.
    flood_ends_with_goaway("PING", frames, 2 * 100 + 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_ends_with_goaway() {
    let frames = (0..FLOOD).map(|_| frame(h2raw::SETTINGS, 0, 0, &[]));
    flood_ends_with_goaway("SETTINGS", frames, 2 * 100 + 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_now_and_then_is_left_alone() {
    let (_server, proxy) = proxy().await;
    let (mut read, mut write) = h2raw::connect(proxy.addr()).await;
    for i in 0..20u64 {
        h2raw::flood(
            &mut write,
            std::iter::once(frame(h2raw::PING, 0, 0, &i.to_be_bytes())),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h2raw::until_goaway(&mut read, Duration::from_millis(300)).await,
        End::Open
    );
}
