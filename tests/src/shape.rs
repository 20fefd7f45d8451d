//! Shape comparison of JSON documents: field paths and their types against a reference.

/// The JSON type name of a value: string, number, bool, object, array, null.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Every field path of a JSON value with the types seen there: `a.b` for object members,
/// `a[]` for the elements of an array (all elements merged), e.g. `offers.offers[].id.value`.
/// The root itself is not listed.
pub fn json_shape(
    v: &serde_json::Value,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<&'static str>> {
    fn walk(
        v: &serde_json::Value,
        path: &str,
        out: &mut std::collections::BTreeMap<String, std::collections::BTreeSet<&'static str>>,
    ) {
        if !path.is_empty() {
            out.entry(path.to_string())
                .or_default()
                .insert(json_type(v));
        }
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(child, &p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for child in a {
                    walk(child, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(v, "", &mut out);
    out
}

/// How a real JSON document differs from a reference (golden) one, field path by field path.
#[derive(Debug, Default)]
pub struct ShapeReport {
    /// Paths of the reference that the real document lacks (a missing object or array once,
    /// with the paths below it).
    pub missing: Vec<String>,
    /// `path: reference type vs real types` where both have the path.
    pub wrong_type: Vec<String>,
    /// Reference paths not checked, with why (see [`compare_shape`]).
    pub skipped: Vec<String>,
    /// Reference paths checked.
    pub checked: usize,
}

impl ShapeReport {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.wrong_type.is_empty()
    }

    /// A readable account: what is missing, what has another type, what was skipped.
    pub fn render(&self, what: &str) -> String {
        let mut s = format!("{what}: {} reference paths checked", self.checked);
        if !self.missing.is_empty() {
            s.push_str(&format!("\n  MISSING ({}):", self.missing.len()));
            for p in &self.missing {
                s.push_str(&format!("\n    {p}"));
            }
        }
        if !self.wrong_type.is_empty() {
            s.push_str(&format!("\n  WRONG TYPE ({}):", self.wrong_type.len()));
            for p in &self.wrong_type {
                s.push_str(&format!("\n    {p}"));
            }
        }
        if !self.skipped.is_empty() {
            s.push_str(&format!("\n  skipped ({}):", self.skipped.len()));
            for p in &self.skipped {
                s.push_str(&format!("\n    {p}"));
            }
        }
        s
    }
}

/// Checks that every field path of `reference` is in `actual` with the same JSON type (values
/// may differ; `actual` may have more). `skip` is `(rule, why)`: rule `a.b` skips that path and
/// everything below it, `a.b.*` only what is below it.
pub fn compare_shape(
    reference: &serde_json::Value,
    actual: &serde_json::Value,
    skip: &[(&str, &str)],
) -> ShapeReport {
    let below = |p: &str, base: &str| {
        p.starts_with(&format!("{base}.")) || p.starts_with(&format!("{base}[]"))
    };
    let reference = json_shape(reference);
    let actual = json_shape(actual);
    let mut report = ShapeReport::default();
    let mut skipped: Vec<usize> = vec![0; skip.len()];
    let mut missing: Vec<(String, String)> = Vec::new();
    for (path, types) in &reference {
        let rule = skip.iter().position(|(r, _)| match r.strip_suffix(".*") {
            Some(base) => below(path, base),
            None => path == r || below(path, r),
        });
        if let Some(i) = rule {
            skipped[i] += 1;
            continue;
        }
        report.checked += 1;
        match actual.get(path) {
            None => missing.push((
                path.clone(),
                types.iter().copied().collect::<Vec<_>>().join("|"),
            )),
            Some(real) => {
                if !types.iter().all(|t| real.contains(t)) {
                    report.wrong_type.push(format!(
                        "{path}: reference {} vs shoal {}",
                        types.iter().copied().collect::<Vec<_>>().join("|"),
                        real.iter().copied().collect::<Vec<_>>().join("|")
                    ));
                }
            }
        }
    }
    // A missing object or array is listed once, with the paths below it.
    for (path, types) in &missing {
        if missing.iter().any(|(other, _)| below(path, other)) {
            continue;
        }
        let under: Vec<String> = missing
            .iter()
            .filter(|(other, _)| below(other, path))
            .map(|(other, t)| format!("{}:{t}", &other[path.len()..]))
            .collect();
        let more = if under.is_empty() {
            String::new()
        } else {
            format!("; with {}", under.join(" "))
        };
        report.missing.push(format!("{path} ({types}{more})"));
    }
    for ((rule, why), n) in skip.iter().zip(skipped) {
        if n > 0 {
            report.skipped.push(format!(
                "{rule} ({n} path{}): {why}",
                if n == 1 { "" } else { "s" }
            ));
        }
    }
    report
}
