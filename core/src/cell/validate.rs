//! The checks of ids, owners and role names every command's input passes, and the refusals
//! the commit path shares.

use super::*;

pub(super) fn not_found_agent(id: &AgentId) -> Rejection {
    Rejection::NotFound(format!("agent {id}"))
}

/// A claim carrying more placements or evictions than one claim may.
pub(super) fn too_many(claim: &ClaimId, n: usize, what: &str, max: usize) -> Rejection {
    Rejection::Invalid(format!(
        "claim {claim}: {n} {what} is more than the {max} allowed in one claim"
    ))
}

pub(super) fn not_found_task(id: &TaskId) -> Rejection {
    Rejection::NotFound(format!("task {id}"))
}

/// Checks an id as Mesos's `validateID` does (`src/common/validation.cpp`): 1..=255 bytes
/// (`NAME_MAX`, as ids name directories), not `.` or `..`, no `/`, `\` or control character
/// (whitespace is allowed). Every id that enters the cell (task, executor, framework, agent,
/// claim, offer, job, service, and later persistence ids) passes here; `what` names the field
/// in the message.
pub fn validate_id(what: &str, id: &str) -> Result<(), Rejection> {
    let why = if id.is_empty() || id.len() > limits::ID_BYTES_MAX {
        format!(
            "{what} must be 1..={} bytes (it has {})",
            limits::ID_BYTES_MAX,
            id.len()
        )
    } else if id == "." || id == ".." {
        format!("{what} '{id}' is not allowed")
    } else if id.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        format!("{what} {id:?} must not contain '/', '\\' or control characters")
    } else {
        return Ok(());
    };
    Err(Rejection::Invalid(why))
}

/// Checks a claim's owner (free text naming a scheduler): bounded, no control characters.
pub(super) fn validate_owner(owner: &str) -> Result<(), Rejection> {
    if owner.len() > limits::CLAIM_OWNER_BYTES_MAX || owner.chars().any(char::is_control) {
        return Err(Rejection::Invalid(format!(
            "claim owner must be at most {} bytes without control characters (it has {})",
            limits::CLAIM_OWNER_BYTES_MAX,
            owner.len()
        )));
    }
    Ok(())
}

/// Checks a role name as Mesos's `roles::validate` does: not empty, not `.` or `..`, no
/// leading `-`, no slashes at the ends, no whitespace, control character or `\`; `*` is the
/// default role. Also none of the characters the resource text form uses as syntax
/// (`cpus(role):1;mem:2`), so a role can always be written in a reservation, and at most
/// `ROLE_NAME_BYTES_MAX` bytes (Mesos sets no bound; roles name records and appear in every
/// offer).
pub fn validate_role_name(name: &str) -> Result<(), Rejection> {
    if name.len() > limits::ROLE_NAME_BYTES_MAX {
        return Err(Rejection::Invalid(format!(
            "role name must be at most {} bytes (it has {})",
            limits::ROLE_NAME_BYTES_MAX,
            name.len()
        )));
    }
    let bad = name.is_empty()
        || name.contains(crate::resources::RESERVED_CHARS)
        || name == "."
        || name == ".."
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    if bad {
        return Err(Rejection::Invalid(format!("invalid role name {name:?}")));
    }
    Ok(())
}
