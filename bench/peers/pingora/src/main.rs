//! Round robin over the servers given on the command line, with upstream keep-alive
//! (Pingora's connection pool, on by default), one worker thread, no TLS, no filters:
//! Pingora's load balancer quick start, without TLS to the servers.
//!
//! Usage: weir-bench-pingora LISTEN SERVER... (threads: 1 unless PINGORA_THREADS says).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Lb(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self.0.select(b"", 256).expect("a server");
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .expect("usage: weir-bench-pingora LISTEN SERVER...");
    let servers: Vec<String> = args.collect();
    assert!(
        !servers.is_empty(),
        "usage: weir-bench-pingora LISTEN SERVER..."
    );

    let conf = ServerConf {
        threads: std::env::var("PINGORA_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let upstreams = LoadBalancer::try_from_iter(servers).expect("server addresses");
    let mut lb = http_proxy_service(&server.configuration, Lb(Arc::new(upstreams)));
    lb.add_tcp(&listen);
    server.add_service(lb);
    server.run_forever();
}
