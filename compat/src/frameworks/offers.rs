//! An offer as Mesos's master writes it (`Master::offer`), typed.

use std::net::IpAddr;

use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::domain_info::{fault_domain, FaultDomain};
use shoal_proto::mesos::v1::resource::AllocationInfo;

/// The address of an agent in its offers' `url`, as Mesos's master fills `Offer.url` from
/// the agent's libprocess address (`http://<ip>:<port>/slave(1)`). `ip` is where the agent's
/// live link comes from (`link_ip`); for an agent without one, the agent's hostname when
/// that is an IP address, 127.0.0.1 for `localhost`, and otherwise 0.0.0.0 (the unspecified
/// address: libmesos's driver needs an IP address there and aborts on an offer without one);
/// `port` is the agent's own HTTP port (0: it serves none).
pub fn agent_address(hostname: &str, link_ip: Option<IpAddr>, port: u16) -> mesos::Address {
    let ip = match (link_ip, hostname.parse::<IpAddr>()) {
        (Some(ip), _) | (None, Ok(ip)) => ip.to_string(),
        (None, Err(_)) if hostname.eq_ignore_ascii_case("localhost") => "127.0.0.1".into(),
        (None, Err(_)) => "0.0.0.0".into(),
    };
    mesos::Address {
        hostname: Some(hostname.to_string()),
        ip: Some(ip),
        port: i32::from(port),
    }
}

/// One offer: with the agent's `url`, and its `domain` when the agent has one. `link_ip` is
/// where the agent's live link comes from.
pub(super) fn offer(
    h: &shoal_core::Hold,
    agent: Option<&shoal_core::Agent>,
    link_ip: Option<IpAddr>,
) -> mesos::Offer {
    let hostname = agent.map(|a| a.hostname.as_str()).unwrap_or("");
    let allocation = || AllocationInfo {
        role: Some(h.role.clone()),
    };
    let resources = shoal_mesos::resources::to_proto(&h.resources)
        .into_iter()
        .map(|mut r| {
            // As Mesos writes offered resources: with the role they were allocated to, and
            // the legacy `role` for unreserved ones.
            r.allocation_info = Some(allocation());
            if r.reservations.is_empty() {
                r.role = Some("*".into());
            }
            r
        })
        .collect();
    let attributes = agent
        .map(|a| {
            a.attributes
                .iter()
                .map(|(k, v)| mesos::Attribute {
                    name: k.to_string(),
                    r#type: mesos::value::Type::Text as i32,
                    text: Some(mesos::value::Text {
                        value: v.to_string(),
                    }),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    mesos::Offer {
        id: mesos::OfferId {
            value: h.id.as_str().to_string(),
        },
        framework_id: mesos::FrameworkId {
            value: h.framework_id.clone(),
        },
        agent_id: mesos::AgentId {
            value: h.agent_id.as_str().to_string(),
        },
        hostname: hostname.to_string(),
        url: Some(mesos::Url {
            scheme: "http".into(),
            address: agent_address(hostname, link_ip, agent.map(|a| a.port).unwrap_or(0)),
            path: Some("/slave(1)".into()),
            ..Default::default()
        }),
        domain: agent
            .and_then(|a| a.domain.as_ref())
            .map(|d| mesos::DomainInfo {
                fault_domain: Some(FaultDomain {
                    region: fault_domain::RegionInfo {
                        name: d.region.clone(),
                    },
                    zone: fault_domain::ZoneInfo {
                        name: d.zone.clone(),
                    },
                }),
            }),
        resources,
        attributes,
        allocation_info: Some(allocation()),
        ..Default::default()
    }
}
