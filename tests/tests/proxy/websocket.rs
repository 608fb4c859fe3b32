//! Upgrades: a WebSocket echo through the proxy, and the tunnel timeout.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use weir_tests::{MockServer, TestProxy, config};

async fn proxy(server: &MockServer, tunnel: &str) -> TestProxy {
    let toml = config(
        "roundrobin",
        &[("s1", server.addr, "")],
        &format!("timeout = {{ tunnel = \"{tunnel}\" }}"),
    );
    TestProxy::start(&toml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_echo_through_the_proxy() {
    let server = MockServer::start("s1").await;
    let proxy = proxy(&server, "1h").await;
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", proxy.addr()), stream)
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    let blob = vec![0xAB; 200_000];
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    ws.close(None).await.unwrap();
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" 101 "), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_close_after_timeout_tunnel() {
    let server = MockServer::start("s1").await;
    let proxy = proxy(&server, "300ms").await;
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", proxy.addr()), stream)
            .await
            .unwrap();
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the tunnel was never closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "closed after {took:?}"
    );
}
