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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use shoal_core::{AgentId, AgentState, FaultDomain, Hold, OfferId, ResourceSet};

    fn agent(hostname: &str, domain: Option<FaultDomain>) -> shoal_core::Agent {
        shoal_core::Agent {
            id: AgentId::new("A1"),
            hostname: hostname.into(),
            port: 0,
            attributes: Default::default(),
            domain,
            total: ResourceSet::parse("cpus:2;mem:1024").unwrap(),
            allocated: ResourceSet::new(),
            state: AgentState::Active,
            version: 1,
            registered_at: 1,
        }
    }

    fn hold() -> Hold {
        Hold {
            id: OfferId::new("O1"),
            framework_id: "F1".into(),
            role: "*".into(),
            agent_id: AgentId::new("A1"),
            resources: ResourceSet::parse("cpus:2;mem:1024").unwrap(),
            created_at: 1,
        }
    }

    #[test]
    fn offers_carry_the_agents_url_and_domain_in_json_and_protobuf() {
        let domain = FaultDomain {
            region: "eu-west-1".into(),
            zone: "eu-west-1a".into(),
        };
        let typed = offer(&hold(), Some(&agent("10.0.0.5", Some(domain))), None);
        let json = shoal_proto::json::to_json_value(&typed);
        assert_eq!(
            json["url"],
            serde_json::json!({"scheme": "http", "address": {"hostname": "10.0.0.5", "ip": "10.0.0.5", "port": 0}, "path": "/slave(1)"})
        );
        assert_eq!(
            json["domain"],
            serde_json::json!({"fault_domain": {"region": {"name": "eu-west-1"}, "zone": {"name": "eu-west-1a"}}})
        );
        assert_eq!(json["allocation_info"], serde_json::json!({"role": "*"}));
        assert_eq!(
            json["resources"][0]["allocation_info"],
            serde_json::json!({"role": "*"})
        );
        assert_eq!(json["resources"][0]["role"], "*");
        assert!(offer(&hold(), Some(&agent("h", None)), None)
            .domain
            .is_none());

        // The same offer in protobuf, as libmesos's driver reads it.
        let back = mesos::Offer::decode(typed.encode_to_vec().as_slice()).unwrap();
        let url = back.url.as_ref().expect("Offer.url in protobuf");
        assert_eq!(url.path.as_deref(), Some("/slave(1)"));
        assert_eq!(url.address.ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(
            back.domain.unwrap().fault_domain.unwrap().zone.name,
            "eu-west-1a"
        );
    }

    #[test]
    fn offer_url_ip_is_always_an_ip_address() {
        for (hostname, ip) in [
            ("192.168.1.7", "192.168.1.7"),
            ("::1", "::1"),
            ("localhost", "127.0.0.1"),
            ("node-7.example", "0.0.0.0"),
            ("", "0.0.0.0"),
        ] {
            let address = agent_address(hostname, None, 5051);
            assert_eq!(address.ip.as_deref(), Some(ip), "{hostname}");
            assert_eq!(address.hostname.as_deref(), Some(hostname));
        }
    }

    #[test]
    fn offer_url_ip_is_where_the_agent_link_comes_from() {
        let link = Some(IpAddr::from([10, 1, 2, 3]));
        for hostname in ["node-7.example", "localhost", "192.168.1.7", ""] {
            let address = agent_address(hostname, link, 5051);
            assert_eq!(address.ip.as_deref(), Some("10.1.2.3"), "{hostname}");
            assert_eq!(address.hostname.as_deref(), Some(hostname));
            assert_eq!(address.port, 5051);
        }
        let o = offer(&hold(), Some(&agent("node-7.example", None)), link);
        assert_eq!(o.url.unwrap().address.ip.as_deref(), Some("10.1.2.3"));
    }
}
