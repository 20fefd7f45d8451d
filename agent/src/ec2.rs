//! EC2 awareness (opt-in): the instance's id, type and placement from the instance metadata
//! service (IMDSv2: a session token first, then the metadata), as agent attributes and a fault
//! domain. At most one second is spent probing; an agent off EC2 just goes on without them.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_core::FaultDomain;

/// The metadata service's usual address.
pub const DEFAULT_URL: &str = "http://169.254.169.254";
/// The whole probe's time budget.
pub const PROBE_BUDGET: Duration = Duration::from_secs(1);

/// What the metadata service told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ec2Info {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
}

impl Ec2Info {
    /// Agent attributes (`ec2_instance_id`, `ec2_instance_type`, `zone`, `region`).
    pub fn attributes(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ec2_instance_id".to_string(), self.instance_id.clone()),
            ("ec2_instance_type".to_string(), self.instance_type.clone()),
            ("zone".to_string(), self.availability_zone.clone()),
            ("region".to_string(), self.region.clone()),
        ])
    }
    pub fn domain(&self) -> FaultDomain {
        FaultDomain {
            region: self.region.clone(),
            zone: self.availability_zone.clone(),
        }
    }
}

/// Probes the metadata service at `base`; `None` when it does not answer within the budget.
pub async fn probe(base: &str) -> Option<Ec2Info> {
    match tokio::time::timeout(PROBE_BUDGET, probe_inner(base.trim_end_matches('/'))).await {
        Ok(Ok(info)) => Some(info),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "no EC2 instance metadata");
            None
        }
        Err(_) => {
            tracing::info!("the EC2 metadata service did not answer within 1 s");
            None
        }
    }
}

async fn probe_inner(base: &str) -> Result<Ec2Info, reqwest::Error> {
    let http = reqwest::Client::builder()
        .timeout(PROBE_BUDGET)
        .no_proxy()
        .build()?;
    let token = http
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let get = |path: &'static str| {
        let req = http
            .get(format!("{base}/latest/meta-data/{path}"))
            .header("X-aws-ec2-metadata-token", token.clone());
        async move { req.send().await?.error_for_status()?.text().await }
    };
    let (instance_id, instance_type, availability_zone) = tokio::try_join!(
        get("instance-id"),
        get("instance-type"),
        get("placement/availability-zone")
    )?;
    let region = match get("placement/region").await {
        Ok(r) => r,
        // Older services have no region: it is the zone without its letter.
        Err(_) => availability_zone
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .to_string(),
    };
    Ok(Ec2Info {
        instance_id,
        instance_type,
        availability_zone,
        region,
    })
}
