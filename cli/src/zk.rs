//! `--zk`: the master publishes itself in ZooKeeper, where frameworks given
//! `--master zk://…/mesos` find it (Mesos's master detection).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use shoal_compat::zk::{Contender, MasterAddress, ZkUrl};

#[derive(Args, Clone, Debug, Default)]
pub(crate) struct ZkArgs {
    /// Publish this master in ZooKeeper for Mesos master detection:
    /// `zk://host1:2181,host2:2181/mesos` (as Mesos's `--zk`).
    #[arg(long, value_parser = |s: &str| s.parse::<ZkUrl>())]
    zk: Option<ZkUrl>,
    /// How long after this master dies its ZooKeeper node stays (Mesos's
    /// `--zk_session_timeout`).
    #[arg(long = "zk-session-timeout", default_value = "10s", value_parser = humantime::parse_duration)]
    zk_session_timeout: Duration,
}

impl ZkArgs {
    /// Publishes the master listening on `listen` (advertised as `advertise_ip` and
    /// `hostname` when given) under `--zk`; `None` without `--zk`.
    pub(crate) async fn publish(
        &self,
        cell_id: &str,
        listen: SocketAddr,
        advertise_ip: Option<IpAddr>,
        hostname: Option<&str>,
    ) -> anyhow::Result<Option<Contender>> {
        let Some(url) = &self.zk else { return Ok(None) };
        let ip = match advertise_ip.unwrap_or(listen.ip()) {
            IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            IpAddr::V4(_) => anyhow::bail!(
                "--zk: the master listens on {listen}; give --advertise-ip, the IPv4 address frameworks reach it at"
            ),
            IpAddr::V6(ip) => anyhow::bail!(
                "--zk: Mesos's MasterInfo holds an IPv4 address; {ip} is IPv6 (give --advertise-ip)"
            ),
        };
        let address = MasterAddress {
            id: cell_id.to_string(),
            ip,
            port: listen.port(),
            hostname: hostname
                .map(str::to_string)
                .unwrap_or_else(|| hostname_or(ip)),
        };
        let contender = Contender::start(url.clone(), &address, self.zk_session_timeout)
            .await
            .with_context(|| format!("publishing the master in ZooKeeper ({url})"))?;
        eprintln!(
            "shoal: published {} in ZooKeeper at {url} ({})",
            address.pid(),
            contender.node().unwrap_or_default()
        );
        Ok(Some(contender))
    }
}

/// The machine's hostname, or the address when it has none.
fn hostname_or(ip: Ipv4Addr) -> String {
    shoal_master::http::machine_hostname().unwrap_or_else(|| ip.to_string())
}
