//! The connection task: owns the WebSocket to the master. It connects out (so a host behind
//! NAT works), reconnects with backoff, and shuttles messages between the socket and the
//! agent loop.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use shoal_core::agent_protocol::{AgentMessage, MasterMessage};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub(super) enum ConnEvent {
    Connected,
    Message(MasterMessage),
    Disconnected,
}

/// The connection task: connect out, shuttle messages, reconnect with backoff.
pub(super) async fn connection(
    master: String,
    backoff_max: Duration,
    mut out_rx: mpsc::Receiver<AgentMessage>,
    conn_tx: mpsc::Sender<ConnEvent>,
) {
    let url = format!(
        "{}/api/shoal/v1/agent/connect",
        master.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let mut backoff = Duration::from_millis(50);
    loop {
        // No Nagle: statuses are small messages that must not wait for an earlier one's ACK.
        match tokio_tungstenite::connect_async_with_config(&url, None, true).await {
            Ok((ws, _)) => {
                backoff = Duration::from_millis(50);
                // What was queued for an older connection is stale; the agent loop re-sends.
                while out_rx.try_recv().is_ok() {}
                let (mut sink, mut stream) = ws.split();
                if conn_tx.send(ConnEvent::Connected).await.is_err() {
                    return;
                }
                // Sending and receiving run apart: the agent loop may await room in the outbox
                // before it takes what the master sent, so neither may wait for the other.
                let stopped = {
                    let send = async {
                        while let Some(msg) = out_rx.recv().await {
                            let text = serde_json::to_string(&msg).expect("messages serialize");
                            if sink.send(Message::text(text)).await.is_err() {
                                return false;
                            }
                        }
                        true
                    };
                    let receive = async {
                        loop {
                            match stream.next().await {
                                Some(Ok(Message::Text(t))) => {
                                    match serde_json::from_str::<MasterMessage>(t.as_str()) {
                                        Ok(m) => {
                                            if conn_tx.send(ConnEvent::Message(m)).await.is_err() {
                                                return true;
                                            }
                                        }
                                        Err(e) => {
                                            tracing::warn!(error = %e, "malformed master message")
                                        }
                                    }
                                }
                                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                                Some(Ok(_)) => {}
                            }
                        }
                    };
                    tokio::select! {
                        stopped = send => stopped,
                        stopped = receive => stopped,
                    }
                };
                if stopped {
                    return;
                }
                let _ = conn_tx.send(ConnEvent::Disconnected).await;
            }
            Err(e) => tracing::debug!(error = %e, %url, "cannot reach the master"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On REGISTERED the agent loop sends every pending update before it reads what the
    /// master sent meanwhile (acknowledgements, kills): the connection must keep sending while
    /// what it received waits for the agent loop.
    #[tokio::test]
    async fn reconcile_deadlock_connection_sends_while_the_agent_loop_has_not_read() {
        const N: u64 = 64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let master = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let (mut sink, mut stream) = ws.split();
            for update_id in 0..N {
                let ack = serde_json::to_string(&MasterMessage::StatusAck { update_id }).unwrap();
                sink.send(Message::text(ack)).await.unwrap();
            }
            let mut received = 0;
            while received < N {
                match stream.next().await {
                    Some(Ok(Message::Text(_))) => received += 1,
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            (received, sink, stream)
        });
        let (out_tx, out_rx) = mpsc::channel(4);
        let (conn_tx, mut conn_rx) = mpsc::channel(4);
        let conn = tokio::spawn(connection(
            format!("http://{addr}"),
            Duration::from_millis(50),
            out_rx,
            conn_tx,
        ));
        assert!(matches!(conn_rx.recv().await, Some(ConnEvent::Connected)));
        let sent = tokio::time::timeout(Duration::from_secs(10), async {
            for _ in 0..N {
                out_tx.send(AgentMessage::Heartbeat).await.unwrap();
            }
        })
        .await;
        assert!(
            sent.is_ok(),
            "the agent loop could not send while it had not read"
        );
        let (received, _sink, _stream) = tokio::time::timeout(Duration::from_secs(10), master)
            .await
            .expect("the master got everything")
            .unwrap();
        assert_eq!(received, N);
        for want in 0..N {
            match conn_rx.recv().await {
                Some(ConnEvent::Message(MasterMessage::StatusAck { update_id })) => {
                    assert_eq!(update_id, want)
                }
                _ => panic!("acknowledgement {want} missing"),
            }
        }
        conn.abort();
    }
}
