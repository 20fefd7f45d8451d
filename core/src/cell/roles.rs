//! Roles (teams): their weight, quota (guarantee and limit) and whether their tasks may be
//! evicted.

use super::*;

impl<R: Records> Cell<R> {
    /// Decides `ConfigureRole`: a valid name, a positive weight, guarantees within the limit
    /// and, summed over all roles, within what the cell can count.
    pub(super) fn decide_role(
        &self,
        name: &str,
        weight: f64,
        quota: &Quota,
        preemptible: bool,
    ) -> Result<Decision<R>, Rejection> {
        validate_role_name(name)?;
        if !(weight.is_finite() && weight > 0.0) {
            return Err(Rejection::Invalid(format!(
                "role {name}: weight must be > 0"
            )));
        }
        if let Some(limit) = &quota.limit {
            for (res, g) in quota.guarantee.scalar_totals() {
                let l = limit.scalar(&res);
                if limit.scalar_totals().iter().any(|(n, _)| *n == res) && l < g {
                    return Err(Rejection::Invalid(format!(
                        "role {name}: guarantee of {res} ({}) exceeds its limit ({})",
                        g.as_f64(),
                        l.as_f64()
                    )));
                }
            }
        }
        self.check_guarantees(name, &quota.guarantee)?;
        Ok(Decision {
            events: vec![Event::RoleConfigured {
                name: name.to_string(),
                weight,
                quota: quota.clone(),
                preemptible,
            }],
            reply: Reply::Done,
        })
    }
}
