//! The bench's v0 framework: a small libprocess scheduler that speaks to the master as
//! libmesos's `MesosSchedulerDriver` does (`src/sched/sched.cpp`).
//!
//! It listens on loopback as `scheduler-<uuid>@127.0.0.1:<port>`. The master dials that UPID
//! and POSTs each event as a `mesos.internal` message (`/<id>/mesos.internal.<Name>`), which
//! [`shoal_compat::libprocess::Inbound`] answers 202 and queues; a reader task stamps each
//! with the instant it arrived. Everything the framework sends is a `mesos.scheduler.Call`,
//! written as one `POST /master/mesos.scheduler.Call` on one kept-alive connection of its
//! own, with Nagle's algorithm off so that each call goes out as it is written. A second task
//! reads the master's answers on that connection and reports any that is not 202.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use prost::Message as _;
use serde_json::Value as Json;
use shoal_compat::libprocess::outbound::encode_request;
use shoal_compat::libprocess::{Inbound, Upid};
use shoal_compat::v0::codec::names;
use shoal_proto::mesos::internal as msg;
use shoal_proto::mesos::scheduler as v0;
use shoal_proto::mesos::v1;
use shoal_proto::mesos::v1::scheduler::call;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Stamped;

/// What reaches the framework: the master's messages, and what went wrong on its own
/// connection.
#[derive(Debug)]
pub enum V0Event {
    Registered(v1::FrameworkId),
    Offers(Vec<v1::Offer>),
    Update(Box<msg::StatusUpdateMessage>),
    Error(String),
    /// The master answered a call with something else than 202, or closed the connection.
    Refused(String),
}

/// The longest head of an answer the master writes on the call connection (a 202 is about
/// 80 bytes): a longer one means the stream is not HTTP answers.
const ANSWER_HEAD_BYTES_MAX: usize = 16 * 1024;

/// A v0 scheduler, subscribed.
pub struct V0Framework {
    pid: Upid,
    master: Upid,
    framework_id: v1::FrameworkId,
    /// The framework's own connection to the master, for its calls.
    calls: OwnedWriteHalf,
    events: mpsc::UnboundedReceiver<Stamped<V0Event>>,
    /// Events read while waiting for another one, kept for a later `wait`.
    pub unclaimed: Vec<Stamped<V0Event>>,
    /// The libprocess server, the stamper and the answer reader: stopped when dropped.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// How long one `wait` may take.
    step: Duration,
}

impl Drop for V0Framework {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl V0Framework {
    /// Starts the scheduler's libprocess end, SUBSCRIBEs with `info` (a v1 `FrameworkInfo`
    /// in JSON) to the master at `master_addr` (`host:port` or `http://host:port`), and
    /// waits for FrameworkRegisteredMessage.
    pub async fn subscribe(master_addr: &str, info: Json, step: Duration) -> Result<V0Framework> {
        let master_addr = master_addr.trim_start_matches("http://");
        let master_sock: SocketAddr = master_addr
            .parse()
            .with_context(|| format!("master address '{master_addr}'"))?;
        let SocketAddr::V4(master_v4) = master_sock else {
            bail!("the master is not on IPv4: {master_sock}");
        };
        let master = Upid::new("master", *master_v4.ip(), master_v4.port())?;

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let pid = Upid::new(
            format!("scheduler-{}", uuid_text()),
            Ipv4Addr::LOCALHOST,
            port,
        )?;
        let (inbound, mut messages) = Inbound::new([pid.id().to_string()]);
        let app = inbound
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("v0 framework: its libprocess server ended: {e}");
            }
        });

        let (tx, events) = mpsc::unbounded_channel();
        let stamp_tx = tx.clone();
        let stamper = tokio::spawn(async move {
            while let Some(m) = messages.recv().await {
                let at = Instant::now();
                let Some(event) = decode(&m.name, &m.body) else {
                    continue;
                };
                if stamp_tx.send((at, event)).is_err() {
                    return;
                }
            }
        });

        let stream = TcpStream::connect(master_sock).await?;
        // A driver's messages are small and each must go out at once.
        stream.set_nodelay(true)?;
        let (read, calls) = stream.into_split();
        let answers = tokio::spawn(read_answers(read, tx));

        let mut fw = V0Framework {
            pid,
            master,
            framework_id: v1::FrameworkId::default(),
            calls,
            events,
            unclaimed: Vec::new(),
            tasks: vec![server, stamper, answers],
            step,
        };
        let framework_info: v1::FrameworkInfo = shoal_proto::json::from_json_value(info)
            .map_err(|e| anyhow::anyhow!("the FrameworkInfo: {e}"))?;
        fw.call(v0::Call {
            r#type: Some(call::Type::Subscribe as i32),
            subscribe: Some(v0::call::Subscribe {
                framework_info,
                force: None,
                suppressed_roles: Vec::new(),
                offer_constraints: None,
            }),
            ..v0::Call::default()
        })
        .await?;
        let (_, registered) = fw
            .wait("FrameworkRegisteredMessage", |e| {
                matches!(e, V0Event::Registered(_))
            })
            .await?;
        if let V0Event::Registered(id) = registered {
            fw.framework_id = id;
        }
        Ok(fw)
    }

    /// Writes `call` (with this framework's id once it has one) to the master; returns once
    /// it is written, as a driver does not wait for the master's answer.
    pub async fn call(&mut self, mut call: v0::Call) -> Result<()> {
        if !self.framework_id.value.is_empty() {
            call.framework_id = Some(self.framework_id.clone());
        }
        let request = encode_request(&self.pid, &self.master, names::CALL, &call.encode_to_vec());
        self.calls
            .write_all(&request)
            .await
            .context("writing a call to the master")
    }

    /// ACCEPTs `offer` with one LAUNCH of `task` on the offer's agent, refusing the rest for
    /// `refuse_seconds`.
    pub async fn accept(
        &mut self,
        offer: &v1::Offer,
        mut task: v1::TaskInfo,
        refuse_seconds: f64,
    ) -> Result<()> {
        task.agent_id = offer.agent_id.clone();
        let launch = v1::offer::Operation {
            r#type: Some(v1::offer::operation::Type::Launch as i32),
            launch: Some(v1::offer::operation::Launch {
                task_infos: vec![task],
            }),
            ..v1::offer::Operation::default()
        };
        self.call(v0::Call {
            r#type: Some(call::Type::Accept as i32),
            accept: Some(call::Accept {
                offer_ids: vec![offer.id.clone()],
                operations: vec![launch],
                filters: Some(v1::Filters {
                    refuse_seconds: Some(refuse_seconds),
                }),
            }),
            ..v0::Call::default()
        })
        .await
    }

    pub async fn kill(&mut self, task: &str, agent: &v1::AgentId) -> Result<()> {
        self.call(v0::Call {
            r#type: Some(call::Type::Kill as i32),
            kill: Some(call::Kill {
                task_id: v1::TaskId {
                    value: task.to_string(),
                },
                agent_id: Some(agent.clone()),
                kill_policy: None,
            }),
            ..v0::Call::default()
        })
        .await
    }

    /// The first event matching `pred`, read before or now. Status updates that ask for an
    /// acknowledgement (a `pid` and a `uuid`) are acknowledged as they are read, as the
    /// driver does with implicit acknowledgements; updates and offers that do not match are
    /// kept for later.
    pub async fn wait(
        &mut self,
        what: &str,
        pred: impl Fn(&V0Event) -> bool,
    ) -> Result<Stamped<V0Event>> {
        if let Some(i) = self.unclaimed.iter().position(|(_, e)| pred(e)) {
            return Ok(self.unclaimed.remove(i));
        }
        let until = Instant::now() + self.step;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let (at, e) = tokio::time::timeout(left, self.events.recv())
                .await
                .with_context(|| format!("v0: timed out waiting for {what}"))?
                .with_context(|| format!("v0: the event stream ended waiting for {what}"))?;
            match &e {
                V0Event::Refused(why) => bail!("v0: waiting for {what}: {why}"),
                V0Event::Error(why) => bail!("v0: FrameworkErrorMessage waiting for {what}: {why}"),
                V0Event::Update(m) => {
                    let wants_ack = m.pid.as_deref().is_some_and(|p| !p.is_empty());
                    if let (true, Some(uuid)) = (wants_ack, m.update.uuid.clone()) {
                        let ack = call::Acknowledge {
                            agent_id: m.update.slave_id.clone().unwrap_or_default(),
                            task_id: m.update.status.task_id.clone(),
                            uuid,
                        };
                        self.call(v0::Call {
                            r#type: Some(call::Type::Acknowledge as i32),
                            acknowledge: Some(ack),
                            ..v0::Call::default()
                        })
                        .await?;
                    }
                }
                _ => {}
            }
            if pred(&e) {
                return Ok((at, e));
            }
            if matches!(e, V0Event::Update(_) | V0Event::Offers(_)) {
                self.unclaimed.push((at, e));
            }
        }
    }

    /// When the StatusUpdateMessage of `task` in `state` arrived.
    pub async fn wait_update(&mut self, task: &str, state: v1::TaskState) -> Result<Instant> {
        let (at, _) = self
            .wait(
                &format!("StatusUpdateMessage {task} {}", state.as_str_name()),
                |e| {
                    matches!(e, V0Event::Update(m)
                    if m.update.status.task_id.value == task && m.update.status.state == state as i32)
                },
            )
            .await?;
        Ok(at)
    }

    /// The next ResourceOffersMessage with an offer of at least `total_cpus`; that offer.
    pub async fn wait_full_offer(&mut self, total_cpus: f64) -> Result<Stamped<v1::Offer>> {
        let full = move |o: &v1::Offer| cpus(o) >= total_cpus;
        let (at, e) = self
            .wait(
                "an offer for the whole agent",
                |e| matches!(e, V0Event::Offers(os) if os.iter().any(full)),
            )
            .await?;
        match e {
            V0Event::Offers(os) => match os.into_iter().find(|o| full(o)) {
                Some(o) => Ok((at, o)),
                None => bail!("v0: the matched offers have no full offer"),
            },
            other => bail!("v0: waited for offers, got {other:?}"),
        }
    }
}

/// A task given as a v1 `TaskInfo` in JSON (as the v1 framework sends it), as protobuf.
pub fn task_info(task: Json) -> Result<v1::TaskInfo> {
    shoal_proto::json::from_json_value(task).map_err(|e| anyhow::anyhow!("the TaskInfo: {e}"))
}

/// The cpus an offer holds.
fn cpus(o: &v1::Offer) -> f64 {
    o.resources
        .iter()
        .filter(|r| r.name == "cpus")
        .filter_map(|r| r.scalar.as_ref().map(|s| s.value))
        .sum()
}

/// A random UUID in its usual text form, as a driver names its scheduler process.
fn uuid_text() -> String {
    let a: u128 = rand::random();
    let h = format!("{a:032x}");
    let part = |from: usize, to: usize| h.get(from..to).unwrap_or("").to_string();
    format!(
        "{}-{}-{}-{}-{}",
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32)
    )
}

/// A master message as what the bench acts on; `None` for the ones it ignores, and for bytes
/// that are not the message they are named as.
fn decode(name: &str, body: &[u8]) -> Option<V0Event> {
    match name {
        names::FRAMEWORK_REGISTERED | names::FRAMEWORK_REREGISTERED => {
            msg::FrameworkRegisteredMessage::decode(body)
                .ok()
                .map(|m| V0Event::Registered(m.framework_id))
        }
        names::RESOURCE_OFFERS => msg::ResourceOffersMessage::decode(body)
            .ok()
            .map(|m| V0Event::Offers(m.offers)),
        names::STATUS_UPDATE => msg::StatusUpdateMessage::decode(body)
            .ok()
            .map(|m| V0Event::Update(Box::new(m))),
        names::FRAMEWORK_ERROR => msg::FrameworkErrorMessage::decode(body)
            .ok()
            .map(|m| V0Event::Error(m.message)),
        _ => None,
    }
}

/// Reads the master's answers to the framework's calls; each that is not a 202, and the
/// connection ending, is reported as [`V0Event::Refused`].
async fn read_answers(
    mut read: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::UnboundedSender<Stamped<V0Event>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).to_string();
            let status = head.split(' ').nth(1).unwrap_or("?").to_string();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            let Some(body) = buf.get(end + 4..total) else {
                break;
            };
            if status != "202" {
                let why = format!(
                    "the master answered a call {status}: {}",
                    String::from_utf8_lossy(body)
                );
                let _ = tx.send((Instant::now(), V0Event::Refused(why)));
            }
            buf.drain(..total);
        }
        if buf.len() > ANSWER_HEAD_BYTES_MAX {
            let _ = tx.send((
                Instant::now(),
                V0Event::Refused("the master's answers are not HTTP".into()),
            ));
            return;
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                let _ = tx.send((
                    Instant::now(),
                    V0Event::Refused("the master closed the call connection".into()),
                ));
                return;
            }
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}
