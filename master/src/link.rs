//! The message boundary between the master's logic and the codecs that carry it.
//!
//! The agent hub ([`crate::agents`]) speaks to an agent only in typed messages of the agent
//! protocol ([`AgentMessage`] up, [`MasterMessage`] down) through an [`AgentLink`]. Two links
//! exist: the WebSocket an agent opens (`GET /api/shoal/v1/agent/connect`, one JSON text
//! frame per message), and [`memory_link`], an in-memory pair of bounded channels a test or a
//! simulation holds the agent's end of. The hub cannot tell them apart, so what runs over the
//! memory pair is the hub that runs in production, socket aside.
//!
//! **Frameworks.** Compat's framework side would plug in at the same place and the same way:
//! a `FrameworkLink` carrying the scheduler API's typed calls (`mesos.v1.scheduler.Call`) up
//! and its events (`Event`) down, implemented once by each codec — the v1 HTTP codec
//! (a POST per call, the subscription's RecordIO stream of events, JSON or protobuf), the v0
//! libprocess codec (messages POSTed between the two processes' UPIDs), and an in-memory
//! pair — while the framework model (subscriptions, offers, filters, update streams) sees
//! only the typed values. Compat does not use it yet: its HTTP handlers still hold the codec
//! and the model together (`compat/src/scheduler.rs`).

use std::future::Future;

use axum::extract::ws::{Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use shoal_core::agent_protocol::{AgentMessage, MasterMessage};
use tokio::sync::mpsc;

use crate::MasterError;

/// A live connection to one agent, as the master sees it: typed messages both ways. It is
/// split at once into its two halves, which the hub drives at the same time (a writer
/// draining the outbox, a reader handling what comes up).
pub trait AgentLink: Send + 'static {
    type Sender: LinkSender;
    type Receiver: LinkReceiver;
    fn split(self) -> (Self::Sender, Self::Receiver);
}

/// The master-to-agent half of a link.
pub trait LinkSender: Send + 'static {
    /// Sends one message. False when it did not go out (the link is closed or failed). It
    /// may wait while the peer does not read: the caller bounds it with a deadline.
    fn send(&mut self, msg: MasterMessage) -> impl Future<Output = bool> + Send;
}

/// The agent-to-master half of a link.
pub trait LinkReceiver: Send + 'static {
    /// The next message; `Some(Err(MasterError::Malformed))` for one that does not decode (the link goes on);
    /// `None` once the peer closes or the link fails.
    fn recv(&mut self) -> impl Future<Output = Option<Result<AgentMessage, MasterError>>> + Send;
}

/// The WebSocket codec: one JSON text frame per message (a binary frame is read as JSON too).
impl AgentLink for WebSocket {
    type Sender = SplitSink<WebSocket, Message>;
    type Receiver = SplitStream<WebSocket>;
    fn split(self) -> (Self::Sender, Self::Receiver) {
        StreamExt::split(self)
    }
}

impl LinkSender for SplitSink<WebSocket, Message> {
    async fn send(&mut self, msg: MasterMessage) -> bool {
        let text = serde_json::to_string(&msg).expect("messages serialize");
        SinkExt::send(self, Message::Text(text.into()))
            .await
            .is_ok()
    }
}

impl LinkReceiver for SplitStream<WebSocket> {
    async fn recv(&mut self) -> Option<Result<AgentMessage, MasterError>> {
        loop {
            match self.next().await? {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).map_err(MasterError::Malformed))
                }
                Ok(Message::Binary(b)) => {
                    return Some(serde_json::from_slice(&b).map_err(MasterError::Malformed))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

/// A link of two bounded in-memory channels: the master's end (an [`AgentLink`] for
/// [`crate::agents::serve_agent`]) and the agent's end. Dropping either end closes the link.
/// `capacity` messages may wait each way (at least one).
pub fn memory_link(capacity: usize) -> (MemoryLink, MemoryAgent) {
    let (down_tx, down_rx) = mpsc::channel(capacity.max(1));
    let (up_tx, up_rx) = mpsc::channel(capacity.max(1));
    (
        MemoryLink {
            down: MemorySender(down_tx),
            up: MemoryReceiver(up_rx),
        },
        MemoryAgent {
            up: up_tx,
            down: down_rx,
        },
    )
}

/// The master's end of a [`memory_link`].
pub struct MemoryLink {
    down: MemorySender,
    up: MemoryReceiver,
}

pub struct MemorySender(mpsc::Sender<MasterMessage>);
pub struct MemoryReceiver(mpsc::Receiver<AgentMessage>);

impl AgentLink for MemoryLink {
    type Sender = MemorySender;
    type Receiver = MemoryReceiver;
    fn split(self) -> (MemorySender, MemoryReceiver) {
        (self.down, self.up)
    }
}

impl LinkSender for MemorySender {
    async fn send(&mut self, msg: MasterMessage) -> bool {
        self.0.send(msg).await.is_ok()
    }
}

impl LinkReceiver for MemoryReceiver {
    async fn recv(&mut self) -> Option<Result<AgentMessage, MasterError>> {
        self.0.recv().await.map(Ok)
    }
}

/// The agent's end of a [`memory_link`]: what an agent would send and receive.
pub struct MemoryAgent {
    up: mpsc::Sender<AgentMessage>,
    down: mpsc::Receiver<MasterMessage>,
}

impl MemoryAgent {
    /// Sends a message up; false once the master's end is gone.
    pub async fn send(&self, msg: AgentMessage) -> bool {
        self.up.send(msg).await.is_ok()
    }

    /// The next message from the master; `None` once the master's end is gone.
    pub async fn recv(&mut self) -> Option<MasterMessage> {
        self.down.recv().await
    }
}
