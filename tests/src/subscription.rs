//! A Mesos v1 scheduler subscription in JSON, driven by hand, and the calls it sends.

use std::time::{Duration, Instant};

use crate::recordio::RecordIoReader;

/// A Mesos v1 scheduler subscription in JSON (`POST /api/v1/scheduler`, `Accept:
/// application/json`), driven by hand: every event read is kept in `events`.
pub struct JsonSubscription {
    pub framework_id: String,
    pub stream_id: String,
    /// The subscription response's Content-Type.
    pub content_type: String,
    /// Every event read so far, in order (the SUBSCRIBED event first).
    pub events: Vec<serde_json::Value>,
    url: String,
    http: reqwest::Client,
    reader: RecordIoReader,
}

impl JsonSubscription {
    /// Subscribes with `framework_info` to the master at `master` (`http://host:port`) and reads
    /// the first event, which must be SUBSCRIBED.
    pub async fn subscribe(
        master: &str,
        framework_info: serde_json::Value,
        deadline: Duration,
    ) -> Result<JsonSubscription, String> {
        let url = format!("{master}/api/v1/scheduler");
        let http = reqwest::Client::new();
        let mut body = serde_json::json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": framework_info}});
        // A framework subscribing again with its id names it in the call too (Mesos checks
        // that the two agree).
        if !body["subscribe"]["framework_info"]["id"].is_null() {
            body["framework_id"] = body["subscribe"]["framework_info"]["id"].clone();
        }
        let resp = tokio::time::timeout(
            deadline,
            http.post(&url)
                .header("Content-Type", "application/json")
                .header("Accept", "application/json")
                .body(body.to_string())
                .send(),
        )
        .await
        .map_err(|_| format!("SUBSCRIBE: no response within {deadline:?}"))?
        .map_err(|e| format!("SUBSCRIBE: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("SUBSCRIBE answered {status}: {text}"));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let stream_id = header("Mesos-Stream-Id");
        let content_type = header("Content-Type");
        if stream_id.is_empty() {
            return Err("SUBSCRIBE answered 200 without a Mesos-Stream-Id header".into());
        }
        let mut sub = JsonSubscription {
            framework_id: String::new(),
            stream_id,
            content_type,
            events: Vec::new(),
            url,
            http,
            reader: RecordIoReader::new(resp),
        };
        let first = sub.next_event(deadline).await?;
        if first["type"] != "SUBSCRIBED" {
            return Err(format!("first event is not SUBSCRIBED: {first}"));
        }
        sub.framework_id = first["subscribed"]["framework_id"]["value"]
            .as_str()
            .ok_or_else(|| format!("SUBSCRIBED without framework_id.value: {first}"))?
            .to_string();
        Ok(sub)
    }

    /// The next event (any type).
    pub async fn next_event(&mut self, deadline: Duration) -> Result<serde_json::Value, String> {
        let record = tokio::time::timeout(deadline, self.reader.next())
            .await
            .map_err(|_| {
                format!(
                    "no event within {deadline:?} (events so far: {})",
                    self.event_types()
                )
            })??
            .ok_or_else(|| {
                format!(
                    "the event stream ended (events so far: {})",
                    self.event_types()
                )
            })?;
        let event: serde_json::Value = serde_json::from_slice(&record).map_err(|e| {
            format!(
                "event is not JSON ({e}): {}",
                String::from_utf8_lossy(&record)
            )
        })?;
        self.events.push(event.clone());
        Ok(event)
    }

    /// Reads events until one of type `ty` (others are kept in `events` only).
    pub async fn wait_for(
        &mut self,
        ty: &str,
        deadline: Duration,
    ) -> Result<serde_json::Value, String> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let e = self
                .next_event(left)
                .await
                .map_err(|e| format!("waiting for {ty}: {e}"))?;
            if e["type"] == ty {
                return Ok(e);
            }
        }
    }

    /// The types of the events read so far, e.g. `SUBSCRIBED, HEARTBEAT, OFFERS`.
    pub fn event_types(&self) -> String {
        self.events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Sends a call (JSON) on its own connection, with this framework's id and stream id; the
    /// HTTP status and body.
    pub async fn call(&self, call: serde_json::Value) -> Result<(u16, String), String> {
        self.caller().call(call).await
    }

    /// What sends this framework's calls, apart from the subscription.
    pub fn caller(&self) -> JsonCaller {
        JsonCaller {
            framework_id: self.framework_id.clone(),
            stream_id: self.stream_id.clone(),
            url: self.url.clone(),
            http: self.http.clone(),
        }
    }

    /// Hands the rest of the event stream to a task that stamps every event with the instant
    /// it arrived (for latency measurements); it ends with the stream or the receiver.
    pub fn stamped_events(
        mut self,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<(Instant, serde_json::Value)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = tokio::spawn(async move {
            while let Ok(Some(r)) = self.reader.next().await {
                let at = Instant::now();
                let Ok(e) = serde_json::from_slice(&r) else {
                    return;
                };
                if tx.send((at, e)).is_err() {
                    return;
                }
            }
        });
        (rx, handle)
    }
}

/// Sends the calls of a subscribed framework ([`JsonSubscription::caller`]).
#[derive(Clone)]
pub struct JsonCaller {
    pub framework_id: String,
    pub stream_id: String,
    url: String,
    http: reqwest::Client,
}

impl JsonCaller {
    /// Sends a call (JSON) with the framework's id and stream id; the HTTP status and body.
    pub async fn call(&self, mut call: serde_json::Value) -> Result<(u16, String), String> {
        call["framework_id"] = serde_json::json!({"value": self.framework_id});
        let resp = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Mesos-Stream-Id", &self.stream_id)
            .body(call.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("{} call: {e}", call["type"]))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }
}
