//! ZooKeeper master detection, as Mesos does it: what a framework given
//! `--master zk://host1:2181,host2:2181/mesos` reads to find the leading master.
//!
//! A master contends by creating an ephemeral sequential node `<path>/json.info_NNNNNNNNNN`
//! holding its `MasterInfo` as JSON (Mesos: `src/master/contender/zookeeper.cpp`, label
//! `json.info` from `src/master/constants.hpp`); the node goes with the master's session. A
//! detector lists the children of `<path>`, takes the membership with the lowest sequence
//! (any label; `src/zookeeper/detector.cpp`) and reads its data (`src/master/detector/zookeeper.cpp`:
//! `json.info` is JSON, `info` binary MasterInfo, no label a UPID string).
//!
//! [`Contender`] keeps this master's node published while it runs: when the session expires
//! (the node is gone then) it connects again and publishes a new node. [`detect`] is the
//! detector side, used by tests and tools.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::{oneshot, watch};
use zookeeper_client as zk;

use crate::limits::{ZK_MASTER_INFO_BYTES_MAX, ZK_RETRY_SECS_MAX, ZK_SESSION_TIMEOUT_SECS};

/// The label of the nodes Shoal writes: MasterInfo as JSON.
pub const MASTER_INFO_JSON_LABEL: &str = "json.info";
/// The label of the older binary-protobuf nodes (read by Mesos's detectors, never written here).
pub const MASTER_INFO_LABEL: &str = "info";

/// Why a ZooKeeper URL, session or node did not work.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("invalid ZooKeeper URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("ZooKeeper {op} {path}: {source}")]
    ZooKeeper {
        op: &'static str,
        path: String,
        #[source]
        source: zk::Error,
    },
    #[error("ZooKeeper connect to {servers}: {source}")]
    Connect {
        servers: String,
        #[source]
        source: zk::Error,
    },
    #[error("ZooKeeper node {path}: {why}")]
    Node { path: String, why: String },
}

/// A parsed `zk://host1:port1,host2:port2/path` (Mesos's `zookeeper::URL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkUrl {
    /// `host:port` list as the client takes it (`h1:2181,h2:2181`).
    pub servers: String,
    /// The znode the masters contend under (`/mesos`); never `/`.
    pub path: String,
}

impl FromStr for ZkUrl {
    type Err = ZkError;
    fn from_str(url: &str) -> Result<ZkUrl, ZkError> {
        let bad = |why| ZkError::Url {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("zk://")
            .ok_or_else(|| bad("expected zk://host:port[,host:port...]/path"))?;
        let (servers, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => return Err(bad("no path (as in zk://host:2181/mesos)")),
        };
        if servers.contains('@') {
            return Err(bad("ZooKeeper credentials in the URL are not supported"));
        }
        if servers.is_empty() || servers.split(',').any(|s| s.is_empty()) {
            return Err(bad("empty server in the host list"));
        }
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Err(bad("the path must not be / (Mesos refuses it too)"));
        }
        if path.contains("//") || path.split('/').any(|c| c == "." || c == "..") {
            return Err(bad("the path has an empty, . or .. component"));
        }
        Ok(ZkUrl {
            servers: servers.to_string(),
            path: path.to_string(),
        })
    }
}

impl fmt::Display for ZkUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zk://{}{}", self.servers, self.path)
    }
}

/// Where the master is reached, as it is published (one setting: `--advertise-ip`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterAddress {
    pub id: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub hostname: String,
}

impl MasterAddress {
    /// The master's libprocess UPID (`master@ip:port`): what a driver addresses.
    pub fn pid(&self) -> String {
        format!("master@{}:{}", self.ip, self.port)
    }

    /// `MasterInfo` in Mesos's JSON (proto field names): `ip` is the IPv4 address in network
    /// byte order read as a little-endian uint32, as Mesos writes `in_addr.s_addr`.
    pub fn master_info_json(&self) -> Json {
        shoal_proto::json::to_json_value(&self.master_info())
    }

    /// `MasterInfo`, typed: what ZooKeeper's node holds and SUBSCRIBED carries.
    pub fn master_info(&self) -> shoal_proto::mesos::v1::MasterInfo {
        shoal_proto::mesos::v1::MasterInfo {
            id: self.id.clone(),
            ip: u32::from_le_bytes(self.ip.octets()),
            port: u32::from(self.port),
            pid: Some(self.pid()),
            hostname: Some(self.hostname.clone()),
            version: Some(crate::MESOS_VERSION.to_string()),
            address: Some(shoal_proto::mesos::v1::Address {
                hostname: Some(self.hostname.clone()),
                ip: Some(self.ip.to_string()),
                port: i32::from(self.port),
            }),
            ..Default::default()
        }
    }
}

/// Splits a child name `label_0000000042` into its label and sequence (Mesos's
/// `Group::Membership`: tokens by `_`, the label the first, the sequence the last).
fn membership(child: &str) -> Option<(&str, u64)> {
    let (label, seq) = child.rsplit_once('_')?;
    let seq = seq.parse::<u64>().ok()?;
    Some((label, seq))
}

/// The leading master's node as a detector sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Detected {
    /// The node's name under the path (`json.info_0000000003`).
    pub node: String,
    /// Its MasterInfo (JSON nodes only; `None` for the binary or UPID forms).
    pub master_info: Option<Json>,
}

async fn connect(url: &ZkUrl, session_timeout: Duration) -> Result<zk::Client, ZkError> {
    zk::Client::connector()
        .with_session_timeout(session_timeout)
        .connect(&url.servers)
        .await
        .map_err(|source| ZkError::Connect {
            servers: url.servers.clone(),
            source,
        })
}

/// Finds the leading master under `url` (`None`: no master contends).
pub async fn detect(url: &ZkUrl) -> Result<Option<Detected>, ZkError> {
    let client = connect(url, Duration::from_secs(ZK_SESSION_TIMEOUT_SECS)).await?;
    let children = match client.list_children(&url.path).await {
        Ok(c) => c,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(source) => {
            return Err(ZkError::ZooKeeper {
                op: "list",
                path: url.path.clone(),
                source,
            })
        }
    };
    let Some((node, label)) = children
        .iter()
        .filter_map(|c| membership(c).map(|(l, s)| (s, c, l)))
        .min_by_key(|(s, _, _)| *s)
        .map(|(_, c, l)| (c.clone(), l.to_string()))
    else {
        return Ok(None);
    };
    let path = format!("{}/{node}", url.path);
    let (data, _) = client
        .get_data(&path)
        .await
        .map_err(|source| ZkError::ZooKeeper {
            op: "get",
            path: path.clone(),
            source,
        })?;
    let master_info = if label == MASTER_INFO_JSON_LABEL {
        Some(serde_json::from_slice(&data).map_err(|e| ZkError::Node {
            path,
            why: format!("not MasterInfo JSON: {e}"),
        })?)
    } else {
        None
    };
    Ok(Some(Detected { node, master_info }))
}

/// Creates `path` and its parents as persistent nodes where they are missing.
async fn ensure_path(client: &zk::Client, path: &str) -> Result<(), ZkError> {
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match client.create(&at, &[], &options).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(source) => {
                return Err(ZkError::ZooKeeper {
                    op: "create",
                    path: at,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Publishes one node for a session: returns its name under the path.
async fn publish(client: &zk::Client, url: &ZkUrl, data: &[u8]) -> Result<String, ZkError> {
    ensure_path(client, &url.path).await?;
    let prefix = format!("{}/{MASTER_INFO_JSON_LABEL}_", url.path);
    let options = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let (_, seq) = client
        .create(&prefix, data, &options)
        .await
        .map_err(|source| ZkError::ZooKeeper {
            op: "create",
            path: prefix.clone(),
            source,
        })?;
    // Mesos's sequence form: ten digits (`%.*d` with 10).
    Ok(format!("{MASTER_INFO_JSON_LABEL}_{:010}", seq.into_i64()))
}

/// This master's membership in ZooKeeper, kept while the value lives or until [`Contender::withdraw`].
#[derive(Debug)]
pub struct Contender {
    node: watch::Receiver<Option<String>>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Contender {
    /// Connects, publishes `address` under `url`, and keeps it published (a new node after
    /// a session expiry). Fails only when the first publication fails. `session_timeout` is
    /// how long after this master dies its node stays (Mesos's `--zk_session_timeout`; the
    /// server bounds it to 2 to 20 of its ticks).
    pub async fn start(
        url: ZkUrl,
        address: &MasterAddress,
        session_timeout: Duration,
    ) -> Result<Contender, ZkError> {
        let data = serde_json::to_vec(&address.master_info_json()).expect("JSON");
        if data.len() > ZK_MASTER_INFO_BYTES_MAX {
            return Err(ZkError::Node {
                path: url.path.clone(),
                why: format!("MasterInfo is {} bytes", data.len()),
            });
        }
        let client = connect(&url, session_timeout).await?;
        let node = publish(&client, &url, &data).await?;
        tracing::info!(%url, %node, pid = %address.pid(), "published in ZooKeeper");
        let (node_tx, node_rx) = watch::channel(Some(node));
        let (stop_tx, stop_rx) = oneshot::channel();
        let done = tokio::spawn(keep_published(
            url,
            data,
            session_timeout,
            client,
            node_tx,
            stop_rx,
        ));
        Ok(Contender {
            node: node_rx,
            stop: Some(stop_tx),
            done: Some(done),
        })
    }

    /// The node now published (`None` while the session is being re-established).
    pub fn node(&self) -> Option<String> {
        self.node.borrow().clone()
    }

    /// Deletes the node and closes the session, so no detector sees this master once this returns.
    pub async fn withdraw(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn keep_published(
    url: ZkUrl,
    data: Vec<u8>,
    session_timeout: Duration,
    mut client: zk::Client,
    node: watch::Sender<Option<String>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut retry = Duration::from_millis(200);
    loop {
        let mut states = client.state_watcher();
        // Wait for the session to end (expired, closed, auth failed) or for the stop.
        let ended = loop {
            tokio::select! {
                _ = &mut stop => break false,
                s = states.changed() => if s.is_terminated() { break true },
            }
        };
        if !ended {
            let current = node.borrow().clone();
            if let Some(n) = current {
                let path = format!("{}/{n}", url.path);
                if let Err(e) = client.delete(&path, None).await {
                    tracing::warn!(%path, error = %e, "could not delete the ZooKeeper node; it goes with the session");
                }
            }
            drop(client); // closes the session
            let _ = node.send(None);
            return;
        }
        let _ = node.send(None);
        tracing::warn!(%url, "ZooKeeper session ended; publishing again");
        // A new session and a new node, retried with a capped backoff.
        client = loop {
            let attempt = async {
                let c = connect(&url, session_timeout).await?;
                let n = publish(&c, &url, &data).await?;
                Ok::<_, ZkError>((c, n))
            };
            tokio::select! {
                _ = &mut stop => return,
                r = attempt => match r {
                    Ok((c, n)) => {
                        tracing::info!(%url, node = %n, "published in ZooKeeper again");
                        let _ = node.send(Some(n));
                        retry = Duration::from_millis(200);
                        break c;
                    }
                    Err(e) => {
                        tracing::warn!(%url, error = %e, "ZooKeeper not reachable; retrying");
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = tokio::time::sleep(retry) => {}
                        }
                        retry = (retry * 2).min(Duration::from_secs(ZK_RETRY_SECS_MAX));
                    }
                },
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_as_mesos_reads_them() {
        let u: ZkUrl = "zk://127.0.0.1:2181,10.0.0.2:2181/mesos".parse().unwrap();
        assert_eq!(u.servers, "127.0.0.1:2181,10.0.0.2:2181");
        assert_eq!(u.path, "/mesos");
        assert_eq!(u.to_string(), "zk://127.0.0.1:2181,10.0.0.2:2181/mesos");
        let nested: ZkUrl = "zk://h:1/a/b/".parse().unwrap();
        assert_eq!(nested.path, "/a/b");
        for bad in [
            "http://h:2181/mesos",
            "zk://h:2181",
            "zk://h:2181/",
            "zk:///mesos",
            "zk://a,,b/mesos",
            "zk://u:p@h:2181/mesos",
            "zk://h:2181/a//b",
            "zk://h:2181/a/../b",
        ] {
            assert!(bad.parse::<ZkUrl>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn master_info_is_what_mesos_writes() {
        let a = MasterAddress {
            id: "cell-1".into(),
            ip: "10.0.0.5".parse().unwrap(),
            port: 5050,
            hostname: "m1".into(),
        };
        let j = a.master_info_json();
        // Mesos's own example for 10.0.0.5: ip 83886090 (network byte order as a uint32).
        assert_eq!(j["ip"], 83_886_090u32);
        assert_eq!(j["pid"], "master@10.0.0.5:5050");
        assert_eq!(j["address"]["ip"], "10.0.0.5");
        assert_eq!(j["port"], 5050);
        // Marathon exits when the master's version is below 1.5.0.
        let v: Vec<u32> = j["version"]
            .as_str()
            .unwrap()
            .split('.')
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(v >= vec![1, 5, 0], "{v:?}");
    }

    #[test]
    fn memberships_are_label_and_sequence() {
        assert_eq!(membership("json.info_0000000003"), Some(("json.info", 3)));
        assert_eq!(membership("info_0000000010"), Some(("info", 10)));
        assert_eq!(membership("log_replicas"), None);
        assert_eq!(membership("noseq"), None);
    }

    /// Against the ZooKeeper `scripts/test` starts (`SHOAL_TEST_ZK`); required in CI.
    fn test_zk() -> Option<String> {
        match std::env::var("SHOAL_TEST_ZK") {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                assert!(
                    std::env::var("CI").map(|v| v != "true").unwrap_or(true),
                    "SHOAL_TEST_ZK must be set in CI"
                );
                eprintln!("skipped: SHOAL_TEST_ZK is not set (scripts/test starts a ZooKeeper)");
                None
            }
        }
    }

    #[tokio::test]
    async fn the_lowest_sequence_leads_and_a_withdrawn_master_is_gone_at_once() {
        let Some(servers) = test_zk() else { return };
        let path = format!("/shoal-test-{}", uuid::Uuid::new_v4());
        let url: ZkUrl = format!("zk://{servers}{path}").parse().unwrap();
        assert_eq!(detect(&url).await.unwrap(), None);
        let addr = |id: &str, port| MasterAddress {
            id: id.into(),
            ip: Ipv4Addr::LOCALHOST,
            port,
            hostname: "localhost".into(),
        };
        let first = Contender::start(url.clone(), &addr("m1", 5050), Duration::from_secs(10))
            .await
            .unwrap();
        let second = Contender::start(url.clone(), &addr("m2", 5051), Duration::from_secs(10))
            .await
            .unwrap();
        let n1 = first.node().unwrap();
        assert!(
            n1.starts_with("json.info_") && n1.len() == "json.info_".len() + 10,
            "{n1}"
        );
        let d = detect(&url).await.unwrap().unwrap();
        assert_eq!(d.node, n1);
        assert_eq!(d.master_info.unwrap()["pid"], "master@127.0.0.1:5050");
        first.withdraw().await;
        let d = detect(&url).await.unwrap().unwrap();
        assert_eq!(d.node, second.node().unwrap());
        assert_eq!(d.master_info.unwrap()["id"], "m2");
        second.withdraw().await;
        assert_eq!(detect(&url).await.unwrap(), None);
    }
}
