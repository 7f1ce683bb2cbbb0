//! NOTIFY (RFC 1996): tells each configured secondary that a zone has a new serial, so
//! it transfers the zone now instead of at its next SOA refresh.
//!
//! One task per (zone, secondary) watches the zone's serial. A new serial is sent until
//! the secondary acknowledges it, at most [`ATTEMPTS`] times, with backoff between
//! attempts; a newer serial arriving meanwhile replaces the one being sent. A secondary
//! that never answers costs a bounded number of small datagrams per change, and never
//! delays an answer or an update: answering and applying only replace the watched value.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use lifeline_model::Backoff;
use tokio::{net::UdpSocket, sync::watch};
use tracing::{debug, info, warn};

use crate::engine::Engine;

/// Sends of one serial to one secondary before giving up on it (RFC 1996 §3.6 leaves
/// the count to the primary; the secondary's own refresh timer covers the rest).
pub const ATTEMPTS: usize = 5;
/// How long one attempt waits for the acknowledgement.
const REPLY_WAIT: Duration = Duration::from_secs(1);

/// Keeps telling `secondary` the newest serial of `zone` (a DNS name without the
/// trailing dot) seen on `serials`, until `serials` is closed.
pub async fn tell(
    zone: String,
    secondary: SocketAddr,
    mut serials: watch::Receiver<Option<u32>>,
    engine: Arc<Engine>,
) {
    let Ok(name) = Name::from_ascii(format!("{zone}.")) else {
        warn!(%zone, "zone name cannot be put in a NOTIFY");
        return;
    };
    let counters = &engine.counters;
    'serials: loop {
        let Some(serial) = *serials.borrow_and_update() else {
            if serials.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        for attempt in 1..=ATTEMPTS {
            match once(&name, secondary).await {
                Ok(()) => {
                    counters.notifies_acknowledged.inc();
                    debug!(%zone, %secondary, serial, attempt, "notify acknowledged");
                    break;
                }
                Err(e) => {
                    counters.notifies_failed.inc();
                    if attempt == ATTEMPTS {
                        info!(%zone, %secondary, serial, error = %e, "secondary did not acknowledge NOTIFY; it picks the change up at its next refresh");
                        break;
                    }
                    debug!(%zone, %secondary, serial, attempt, error = %e, "notify not acknowledged; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                changed = serials.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue 'serials;
                }
            }
        }
        if serials.changed().await.is_err() {
            return;
        }
    }
}

/// Why one NOTIFY was not acknowledged.
#[derive(Debug, thiserror::Error)]
enum Unacknowledged {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no acknowledgement within {REPLY_WAIT:?}")]
    Timeout,
    #[error("answered {0}")]
    Refused(ResponseCode),
    #[error("cannot encode the message: {0}")]
    Encode(String),
}

/// One NOTIFY and the wait for its acknowledgement. Replies that are not the
/// acknowledgement (another id, not a response, garbage) are ignored.
async fn once(zone: &Name, secondary: SocketAddr) -> Result<(), Unacknowledged> {
    let local: SocketAddr = if secondary.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(secondary).await?;
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Notify);
    message.metadata.authoritative = true;
    message.add_query(Query::query(zone.clone(), RecordType::SOA));
    let bytes = message
        .to_vec()
        .map_err(|e| Unacknowledged::Encode(e.to_string()))?;
    socket.send(&bytes).await?;
    let wait = async {
        let mut buf = [0u8; 512];
        loop {
            let n = socket.recv(&mut buf).await?;
            let Ok(reply) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let m = &reply.metadata;
            if m.id != id || m.message_type != MessageType::Response || m.op_code != OpCode::Notify
            {
                continue;
            }
            return match m.response_code {
                ResponseCode::NoError => Ok(()),
                code => Err(Unacknowledged::Refused(code)),
            };
        }
    };
    tokio::time::timeout(REPLY_WAIT, wait)
        .await
        .map_err(|_| Unacknowledged::Timeout)?
}
