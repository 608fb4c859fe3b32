//! Upgraded connections (WebSocket and the like): after the 101, bytes flow both ways
//! until either side closes or nothing moves for `timeout.tunnel`.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::ConnInfo;
use crate::activity::{Activity, Tracked};
use crate::upstream::InFlight;

pub async fn run(
    client: OnUpgrade,
    server: OnUpgrade,
    idle: Duration,
    conn: Arc<ConnInfo>,
    slot: InFlight,
) {
    let (client, server) = match tokio::try_join!(client, server) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("upgrade from {} failed: {e}", conn.peer);
            return;
        }
    };
    let activity = Arc::new(Activity::default());
    let mut client = Tracked::new(
        TokioIo::new(client),
        bytes::Bytes::new(),
        Arc::clone(&activity),
    );
    let mut server = TokioIo::new(server);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => {
            if let Err(e) = r {
                tracing::debug!("tunnel from {} ended: {e}", conn.peer);
            }
        }
        _ = activity.expired(idle, None) => {
            tracing::debug!("tunnel from {} closed after {idle:?} idle", conn.peer);
        }
    }
    drop(slot);
}
