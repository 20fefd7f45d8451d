//! The resource model, compatible with Mesos: scalars (cpus, mem, disk, gpus), ranges (ports)
//! and sets, each optionally reserved to a role.
//!
//! Scalars are fixed point with three decimals, as in Mesos (`Value.Scalar` is rounded to
//! 0.001), so that adding and subtracting never drifts: `0.1 + 0.2 - 0.3 == 0` holds here.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The reservation role Mesos writes as `*`: unreserved resources.
pub const UNRESERVED: &str = "*";

/// A scalar in thousandths (Mesos rounds scalars to three decimals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub i64);

impl Milli {
    /// The largest scalar anything may hold (10^12 units, e.g. a petabyte of memory in MB):
    /// one entry, and one name summed over its roles in a set (an agent's total, a role's
    /// consumption or guarantee). Sums over a whole cell are bounded apart, by
    /// `limits::CELL_SCALAR_MILLI_MAX`.
    pub const MAX: Milli = Milli(1_000_000_000_000_000);

    pub fn from_f64(v: f64) -> Option<Milli> {
        if !v.is_finite() || !(0.0..=1e12).contains(&v) {
            return None;
        }
        Some(Milli((v * 1000.0).round() as i64))
    }
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl Serialize for Milli {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Milli {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Milli::from_f64(v).ok_or_else(|| serde::de::Error::custom(format!("invalid scalar {v}")))
    }
}

/// Inclusive ranges, kept sorted and coalesced (`[31000-31005, 31010-31010]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    pub fn new(mut ranges: Vec<(u64, u64)>) -> Option<Ranges> {
        if ranges.iter().any(|(b, e)| b > e) {
            return None;
        }
        ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (b, e) in ranges {
            match out.last_mut() {
                Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((b, e)),
            }
        }
        Some(Ranges(out))
    }
    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// How many values the ranges hold, saturating at `u64::MAX` (`0..=u64::MAX` holds one
    /// more than a u64 counts).
    pub fn count(&self) -> u64 {
        self.0.iter().fold(0u64, |n, (b, e)| {
            n.saturating_add((e - b).saturating_add(1))
        })
    }
    pub fn contains(&self, other: &Ranges) -> bool {
        other
            .0
            .iter()
            .all(|&(b, e)| self.0.iter().any(|&(sb, se)| sb <= b && e <= se))
    }
    pub fn intersects(&self, other: &Ranges) -> bool {
        self.0
            .iter()
            .any(|&(sb, se)| other.0.iter().any(|&(b, e)| b <= se && sb <= e))
    }
    fn add(&self, other: &Ranges) -> Ranges {
        let mut all = self.0.clone();
        all.extend_from_slice(&other.0);
        Ranges::new(all).expect("sorted ranges stay valid")
    }
    fn subtract(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        for &(mut b, e) in &self.0 {
            let mut alive = true;
            for &(ob, oe) in &other.0 {
                if !alive || oe < b || ob > e {
                    continue;
                }
                if ob > b {
                    out.push((b, ob - 1));
                }
                if oe >= e {
                    alive = false;
                } else {
                    b = oe + 1;
                }
            }
            if alive {
                out.push((b, e));
            }
        }
        Ranges::new(out).expect("subtraction keeps ranges valid")
    }
}

/// The value of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Scalar(Milli),
    Ranges(Ranges),
    Set(BTreeSet<String>),
}

impl Value {
    fn kind(&self) -> u8 {
        match self {
            Value::Scalar(_) => 0,
            Value::Ranges(_) => 1,
            Value::Set(_) => 2,
        }
    }
    fn is_empty(&self) -> bool {
        match self {
            Value::Scalar(m) => m.0 == 0,
            Value::Ranges(r) => r.is_empty(),
            Value::Set(s) => s.is_empty(),
        }
    }
}

/// One named resource, reserved to `role` or unreserved (`role == "*"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    pub name: Name,
    #[serde(default = "unreserved")]
    pub role: Name,
    pub value: Value,
}

/// A resource name or role: short strings kept inline (no heap allocation up to 24 bytes), so
/// copying a resource set on the commit path allocates nothing per entry.
pub type Name = compact_str::CompactString;

fn unreserved() -> Name {
    Name::const_new(UNRESERVED)
}

/// A bag of resources: at most one entry per (name, role), sorted, with no empty entries, and
/// each scalar summed over its roles at most [`Milli::MAX`] (so [`ResourceSet::scalar`] and
/// [`ResourceSet::scalar_totals`] cannot overflow). Its fields are private so that these
/// invariants hold: build one with [`ResourceSet::parse`], [`ResourceSet::from_resources`] or
/// the arithmetic below.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ResourceSetRepr", into = "String")]
pub struct ResourceSet {
    entries: Vec<Resource>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource '{0}' has conflicting types")]
    TypeMismatch(String),
    #[error("cannot parse resources '{input}': {why}")]
    Parse { input: String, why: String },
    #[error("resource '{0}' has an invalid value")]
    InvalidValue(String),
    /// Adding would count the same port or set item twice (a double booking).
    #[error("resource '{0}' overlaps what is already there")]
    Overlap(String),
    #[error("resource '{0}' exceeds the largest amount allowed")]
    TooLarge(String),
}

/// On input a resource set is either the Mesos text form (`"cpus:1;mem:128"`) or a list of
/// [`Resource`]s; on output it is always the text form, which is compact and lossless.
#[derive(Deserialize)]
#[serde(untagged)]
enum ResourceSetRepr {
    Text(String),
    List(Vec<Resource>),
}

impl TryFrom<ResourceSetRepr> for ResourceSet {
    type Error = ResourceError;
    fn try_from(v: ResourceSetRepr) -> Result<Self, ResourceError> {
        match v {
            ResourceSetRepr::Text(s) => ResourceSet::parse(&s),
            ResourceSetRepr::List(l) => ResourceSet::from_resources(l),
        }
    }
}

impl From<ResourceSet> for String {
    fn from(s: ResourceSet) -> Self {
        s.to_string()
    }
}

/// Characters the text form uses as syntax: names and roles may not contain them.
pub(crate) const RESERVED_CHARS: &[char] = &[';', ':', '(', ')', '[', ']', '{', '}', ','];

impl ResourceSet {
    pub fn new() -> ResourceSet {
        ResourceSet::default()
    }

    pub fn from_resources(
        v: impl IntoIterator<Item = Resource>,
    ) -> Result<ResourceSet, ResourceError> {
        let mut out = ResourceSet::new();
        for r in v {
            if r.name.is_empty()
                || r.role.is_empty()
                || r.name.trim() != r.name
                || r.role.trim() != r.role
                || r.name.contains(RESERVED_CHARS)
                || r.role.contains(RESERVED_CHARS)
            {
                return Err(ResourceError::InvalidValue(r.name.to_string()));
            }
            if let Value::Set(items) = &r.value {
                if items
                    .iter()
                    .any(|i| i.contains(RESERVED_CHARS) || i.trim() != i)
                {
                    return Err(ResourceError::InvalidValue(r.name.to_string()));
                }
            }
            out.add_one(r)?;
        }
        Ok(out)
    }

    /// A set of unreserved scalars, e.g. `ResourceSet::scalars(&[("cpus", 1.0), ("mem", 128.0)])`.
    pub fn scalars(items: &[(&str, f64)]) -> ResourceSet {
        let mut out = ResourceSet::new();
        for (name, v) in items {
            let m = Milli::from_f64(*v).expect("valid scalar");
            out.add_one(Resource {
                name: Name::new(name),
                role: unreserved(),
                value: Value::Scalar(m),
            })
            .expect("scalars have one type");
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.entries.iter()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, name: &str, role: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|e| (e.name.as_str(), e.role.as_str()).cmp(&(name, role)))
    }

    /// The scalar `name` summed over its roles (its entries are neighbours: sorted by name).
    fn name_total(&self, name: &str) -> i64 {
        let first = self.entries.partition_point(|e| e.name.as_str() < name);
        self.entries[first..]
            .iter()
            .take_while(|e| e.name == name)
            .map(|e| match e.value {
                Value::Scalar(m) => m.0,
                _ => 0,
            })
            .sum()
    }

    fn add_one(&mut self, r: Resource) -> Result<(), ResourceError> {
        if r.value.is_empty() {
            return Ok(());
        }
        if let Value::Scalar(b) = r.value {
            // Both sides are at most `Milli::MAX`: the sum cannot overflow an i64.
            if self.name_total(&r.name) + b.0 > Milli::MAX.0 {
                return Err(ResourceError::TooLarge(r.name.to_string()));
            }
        }
        match self.position(&r.name, &r.role) {
            Ok(i) => {
                let e = &mut self.entries[i];
                // A sum, not a union: the same port or item twice is an overlap, never merged.
                e.value = match (&e.value, &r.value) {
                    // Within `Milli::MAX`: the name's sum over roles was checked above.
                    (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(Milli(a.0 + b.0)),
                    (Value::Ranges(a), Value::Ranges(b)) if a.intersects(b) => {
                        return Err(ResourceError::Overlap(r.name.to_string()))
                    }
                    (Value::Ranges(a), Value::Ranges(b)) => Value::Ranges(a.add(b)),
                    (Value::Set(a), Value::Set(b)) if !a.is_disjoint(b) => {
                        return Err(ResourceError::Overlap(r.name.to_string()))
                    }
                    (Value::Set(a), Value::Set(b)) => Value::Set(a.union(b).cloned().collect()),
                    _ => return Err(ResourceError::TypeMismatch(r.name.to_string())),
                };
            }
            Err(i) => {
                if self
                    .entries
                    .iter()
                    .any(|e| e.name == r.name && e.value.kind() != r.value.kind())
                {
                    return Err(ResourceError::TypeMismatch(r.name.to_string()));
                }
                self.entries.insert(i, r)
            }
        }
        Ok(())
    }

    /// `self + other`, all or nothing: on an error (types that differ, ports or set items
    /// counted twice, an amount too large) `self` is unchanged.
    pub fn add(&mut self, other: &ResourceSet) -> Result<(), ResourceError> {
        if self.add_scalars_in_place(other) {
            return Ok(());
        }
        let mut next = self.clone();
        for r in &other.entries {
            next.add_one(r.clone())?;
        }
        *self = next;
        Ok(())
    }

    /// The common case of `add` without copying: every entry of `other` is a scalar that
    /// `self` already has and each name's sum over roles stays in range. Checks everything
    /// before changing anything; returns false (and changes nothing) otherwise.
    fn add_scalars_in_place(&mut self, other: &ResourceSet) -> bool {
        for (k, r) in other.entries.iter().enumerate() {
            let Value::Scalar(_) = r.value else {
                return false;
            };
            let Ok(i) = self.position(&r.name, &r.role) else {
                return false;
            };
            if !matches!(self.entries[i].value, Value::Scalar(_)) {
                return false;
            }
            // Once per name (its first entry in `other`): both sides are within `Milli::MAX`.
            let first_of_name = k == 0 || other.entries[k - 1].name != r.name;
            if first_of_name && self.name_total(&r.name) + other.name_total(&r.name) > Milli::MAX.0
            {
                return false;
            }
        }
        for r in &other.entries {
            let i = self.position(&r.name, &r.role).expect("checked above");
            if let (Value::Scalar(a), Value::Scalar(b)) = (&mut self.entries[i].value, &r.value) {
                a.0 += b.0;
            }
        }
        true
    }

    /// Whether `wanted` fits in `self - allocated` (`allocated` contained in `self`), without
    /// building the difference: scalars must be left over, ports and set items must be in
    /// `self` and not in `allocated`.
    pub fn fits_beside(&self, allocated: &ResourceSet, wanted: &ResourceSet) -> bool {
        wanted.entries.iter().all(|r| {
            let Ok(i) = self.position(&r.name, &r.role) else {
                return false;
            };
            let used = allocated
                .position(&r.name, &r.role)
                .ok()
                .map(|j| &allocated.entries[j].value);
            match (&self.entries[i].value, &r.value, used) {
                (Value::Scalar(t), Value::Scalar(w), None) => t.0 >= w.0,
                (Value::Scalar(t), Value::Scalar(w), Some(Value::Scalar(u))) => t.0 - u.0 >= w.0,
                (Value::Ranges(t), Value::Ranges(w), None) => t.contains(w),
                (Value::Ranges(t), Value::Ranges(w), Some(Value::Ranges(u))) => {
                    t.contains(w) && !u.intersects(w)
                }
                (Value::Set(t), Value::Set(w), None) => w.is_subset(t),
                (Value::Set(t), Value::Set(w), Some(Value::Set(u))) => {
                    w.is_subset(t) && w.is_disjoint(u)
                }
                _ => false,
            }
        })
    }

    /// `self + other.scalars_only()`, without the copy when `other` has only scalars.
    pub fn add_scalars(&mut self, other: &ResourceSet) -> Result<(), ResourceError> {
        if other
            .entries
            .iter()
            .all(|e| matches!(e.value, Value::Scalar(_)))
        {
            self.add(other)
        } else {
            self.add(&other.scalars_only())
        }
    }

    /// Only the scalar entries (what quotas and cluster totals count).
    pub fn scalars_only(&self) -> ResourceSet {
        ResourceSet {
            entries: self
                .entries
                .iter()
                .filter(|e| matches!(e.value, Value::Scalar(_)))
                .cloned()
                .collect(),
        }
    }

    /// Whether every entry of `other` fits in `self` (same name and role).
    pub fn contains(&self, other: &ResourceSet) -> bool {
        other
            .entries
            .iter()
            .all(|r| match self.position(&r.name, &r.role) {
                Err(_) => false,
                Ok(i) => match (&self.entries[i].value, &r.value) {
                    (Value::Scalar(a), Value::Scalar(b)) => a.0 >= b.0,
                    (Value::Ranges(a), Value::Ranges(b)) => a.contains(b),
                    (Value::Set(a), Value::Set(b)) => b.is_subset(a),
                    _ => false,
                },
            })
    }

    /// The first entry of `other` that does not fit in `self`, for error messages.
    pub fn first_missing(&self, other: &ResourceSet) -> Option<String> {
        other.entries.iter().find_map(|r| {
            let single = ResourceSet {
                entries: vec![r.clone()],
            };
            (!self.contains(&single)).then(|| r.name.to_string())
        })
    }

    /// `self - other`; `other` must be contained in `self`.
    pub fn subtract(&mut self, other: &ResourceSet) -> Result<(), ResourceError> {
        if !self.contains(other) {
            return Err(ResourceError::InvalidValue(
                self.first_missing(other).unwrap_or_default(),
            ));
        }
        for r in &other.entries {
            let i = self.position(&r.name, &r.role).expect("contained");
            let e = &mut self.entries[i];
            e.value = match (&e.value, &r.value) {
                (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(Milli(a.0 - b.0)),
                (Value::Ranges(a), Value::Ranges(b)) => Value::Ranges(a.subtract(b)),
                (Value::Set(a), Value::Set(b)) => Value::Set(a.difference(b).cloned().collect()),
                _ => unreachable!("contains checked the types"),
            };
            if e.value.is_empty() {
                self.entries.remove(i);
            }
        }
        Ok(())
    }

    /// The sum of a scalar over all roles (0 when absent).
    pub fn scalar(&self, name: &str) -> Milli {
        Milli(
            self.entries
                .iter()
                .filter(|e| e.name == name)
                .map(|e| match e.value {
                    Value::Scalar(m) => m.0,
                    _ => 0,
                })
                .sum(),
        )
    }

    /// The scalar entries summed over roles: `[(name, amount)]`, sorted by name.
    pub fn scalar_totals(&self) -> Vec<(Name, Milli)> {
        let mut out: Vec<(Name, Milli)> = Vec::new();
        for e in &self.entries {
            if let Value::Scalar(m) = e.value {
                match out.last_mut() {
                    Some(last) if last.0 == e.name => last.1 .0 += m.0,
                    _ => out.push((e.name.clone(), m)),
                }
            }
        }
        out
    }

    /// Every role named in a reservation of this set (not `*`).
    pub fn reserved_roles(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .map(|e| e.role.as_str())
            .filter(|r| *r != UNRESERVED)
    }

    /// Parses the Mesos text form, e.g.
    /// `cpus:4;mem:8192;disk:20000;ports:[31000-32000];gpus:1;zones:{a,b};cpus(web):2`.
    pub fn parse(input: &str) -> Result<ResourceSet, ResourceError> {
        let err = |why: &str| ResourceError::Parse {
            input: input.to_string(),
            why: why.to_string(),
        };
        let mut out = ResourceSet::new();
        for part in input.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, val) = part
                .split_once(':')
                .ok_or_else(|| err("expected name:value"))?;
            let key = key.trim();
            let (name, role) = match key.split_once('(') {
                Some((n, rest)) => {
                    let role = rest
                        .strip_suffix(')')
                        .ok_or_else(|| err("unclosed role parenthesis"))?;
                    (n.trim(), role.trim())
                }
                None => (key, UNRESERVED),
            };
            if name.is_empty() || role.is_empty() {
                return Err(err("empty name or role"));
            }
            let val = val.trim();
            let value = if let Some(inner) = val.strip_prefix('[') {
                let inner = inner
                    .strip_suffix(']')
                    .ok_or_else(|| err("unclosed range"))?;
                let mut ranges = Vec::new();
                for r in inner.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    let (b, e) = r
                        .split_once('-')
                        .ok_or_else(|| err("range must be begin-end"))?;
                    let b: u64 = b
                        .trim()
                        .parse()
                        .map_err(|_| err("range bound is not a number"))?;
                    let e: u64 = e
                        .trim()
                        .parse()
                        .map_err(|_| err("range bound is not a number"))?;
                    ranges.push((b, e));
                }
                Value::Ranges(Ranges::new(ranges).ok_or_else(|| err("range begins after it ends"))?)
            } else if let Some(inner) = val.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or_else(|| err("unclosed set"))?;
                Value::Set(
                    inner
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                )
            } else {
                let v: f64 = val.parse().map_err(|_| err("scalar is not a number"))?;
                Value::Scalar(
                    Milli::from_f64(v).ok_or_else(|| err("scalar must be finite and >= 0"))?,
                )
            };
            out.add_one(Resource {
                name: Name::new(name),
                role: Name::new(role),
                value,
            })?;
        }
        Ok(out)
    }
}

impl fmt::Display for ResourceSet {
    /// The Mesos text form, which [`ResourceSet::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            f.write_str(&e.name)?;
            if e.role != UNRESERVED {
                write!(f, "({})", e.role)?;
            }
            match &e.value {
                Value::Scalar(m) => write!(f, ":{}", m.as_f64())?,
                Value::Ranges(r) => {
                    let parts: Vec<String> = r.0.iter().map(|(b, e)| format!("{b}-{e}")).collect();
                    write!(f, ":[{}]", parts.join(","))?
                }
                Value::Set(s) => write!(
                    f,
                    ":{{{}}}",
                    s.iter().cloned().collect::<Vec<_>>().join(",")
                )?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        assert!(
            ResourceSet::parse("ports:[1-5];ports:[5-6]").is_err(),
            "a port listed twice"
        );
        assert!(ResourceSet::parse("mem:1e12;mem:1").is_err(), "too large");
        let s = ResourceSet::parse("cpus:4;mem:8192;ports:[31000-32000];cpus(web):2;zones:{a,b}")
            .unwrap();
        assert_eq!(s.scalar("cpus"), Milli(6000));
        let back = ResourceSet::parse(&s.to_string()).unwrap();
        assert_eq!(s, back);
    }

    #[test]
    fn fixed_point_does_not_drift() {
        let mut a = ResourceSet::scalars(&[("cpus", 0.3)]);
        a.subtract(&ResourceSet::scalars(&[("cpus", 0.1)])).unwrap();
        a.subtract(&ResourceSet::scalars(&[("cpus", 0.2)])).unwrap();
        assert!(a.is_empty());
    }

    #[test]
    fn ranges_subtract_and_contain() {
        let mut a = ResourceSet::parse("ports:[100-200]").unwrap();
        let b = ResourceSet::parse("ports:[150-150,100-101]").unwrap();
        assert!(a.contains(&b));
        a.subtract(&b).unwrap();
        assert_eq!(a.to_string(), "ports:[102-149,151-200]");
        assert!(!a.contains(&b));
    }

    #[test]
    fn reservations_are_separate() {
        let total = ResourceSet::parse("cpus:1;cpus(web):1").unwrap();
        assert!(total.contains(&ResourceSet::parse("cpus(web):1").unwrap()));
        assert!(!total.contains(&ResourceSet::parse("cpus(db):1").unwrap()));
        assert!(!total.contains(&ResourceSet::parse("cpus:2").unwrap()));
    }

    #[test]
    fn serde_uses_text_and_accepts_lists() {
        let s = ResourceSet::parse("cpus:0.1;mem:32;ports:[1-2]").unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"cpus:0.1;mem:32;ports:[1-2]\"");
        let back: ResourceSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        let list: ResourceSet =
            serde_json::from_str(r#"[{"name":"cpus","value":{"scalar":0.5}},{"name":"cpus","role":"web","value":{"scalar":1}}]"#).unwrap();
        assert_eq!(list.to_string(), "cpus:0.5;cpus(web):1");
        assert!(
            serde_json::from_str::<ResourceSet>(r#"[{"name":"a;b","value":{"scalar":1}}]"#)
                .is_err()
        );
    }

    #[test]
    fn bad_text_is_an_error() {
        for bad in [
            "cpus",
            "cpus:x",
            "ports:[5-1]",
            "cpus:-1",
            "cpus(:1",
            "cpus:1;cpus:[1-2]",
            "ports:[1-2",
        ] {
            assert!(ResourceSet::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod overflow_tests {
    use super::*;

    /// A port range of every u64 overflowed `e - b + 1` (and the sum of counts).
    #[test]
    fn full_port_range_counts_without_overflow() {
        let all = Ranges::new(vec![(0, u64::MAX)]).unwrap();
        assert_eq!(all.count(), u64::MAX, "saturates: one more than u64 holds");
        let two = Ranges::new(vec![(0, u64::MAX - 2), (u64::MAX, u64::MAX)]).unwrap();
        assert_eq!(two.count(), u64::MAX);
        let mut s = ResourceSet::parse(&format!("ports:[0-{}]", u64::MAX)).unwrap();
        s.subtract(&ResourceSet::parse(&format!("ports:[{0}-{0}]", u64::MAX)).unwrap())
            .unwrap();
        assert_eq!(s.to_string(), format!("ports:[0-{}]", u64::MAX - 1));
    }

    /// A scalar summed over roles is one amount: it is bounded like one entry, so `scalar`
    /// and `scalar_totals` (quota and cluster sums) never overflow, however many roles.
    #[test]
    fn a_scalar_over_roles_is_bounded_like_one_entry() {
        assert!(ResourceSet::parse("cpus:1e12;cpus(web):0.001").is_err());
        let text: Vec<String> = (0..10_000).map(|i| format!("cpus(r{i}):1e12")).collect();
        assert!(matches!(
            ResourceSet::parse(&text.join(";")),
            Err(ResourceError::TooLarge(_))
        ));
        let mut a = ResourceSet::parse("cpus(web):1e12").unwrap();
        let before = a.clone();
        assert!(a.add(&ResourceSet::parse("cpus:0.001").unwrap()).is_err());
        assert_eq!(a, before, "an add that fails changes nothing");
        assert!(a
            .add_scalars(&ResourceSet::parse("cpus(db):1").unwrap())
            .is_err());
        let ok = ResourceSet::parse("cpus(web):5e11;cpus:5e11").unwrap();
        assert_eq!(ok.scalar("cpus"), Milli::MAX);
        assert_eq!(ok.scalar_totals(), vec![(Name::new("cpus"), Milli::MAX)]);
    }
}
