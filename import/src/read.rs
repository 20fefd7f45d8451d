//! Reading a definition: the context that gathers every error and note, the reader of one
//! JSON object that knows which keys were taken, and the conversions both formats share.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use shoal_sched::template::{valid_name, FieldError};

/// What a Marathon app is read as: the fields that matter differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Job,
    Service,
}

#[derive(Default)]
pub(crate) struct Context {
    pub(crate) errors: Vec<FieldError>,
    pub(crate) notes: Vec<String>,
}

impl Context {
    pub(crate) fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn unsupported(&mut self, field: &str, why: &str) {
        let message = if why.is_empty() {
            "unsupported field".to_string()
        } else {
            format!("unsupported field: {why}")
        };
        self.error(field, message);
    }
}

/// True for the values exports write when a field is not used.
pub(crate) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

/// One JSON object being read: the keys taken are known; [`Object::finish`] reports the rest.
pub(crate) struct Object<'a> {
    pub(crate) path: String,
    pub(crate) map: &'a Map<String, Value>,
    taken: Vec<&'static str>,
}

impl<'a> Object<'a> {
    pub(crate) fn new(cx: &mut Context, path: &str, value: &'a Value) -> Option<Object<'a>> {
        match value.as_object() {
            Some(map) => Some(Object {
                path: path.to_string(),
                map,
                taken: Vec::new(),
            }),
            None => {
                cx.error(path, "must be an object");
                None
            }
        }
    }

    pub(crate) fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// A field's value, unless it is absent or empty.
    pub(crate) fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.taken.push(key);
        self.map.get(key).filter(|v| !is_empty(v))
    }

    pub(crate) fn string(&mut self, cx: &mut Context, key: &'static str) -> Option<&'a str> {
        let v = self.take(key)?;
        let s = v.as_str();
        if s.is_none() {
            cx.error(&self.at(key), "must be a string");
        }
        s
    }

    pub(crate) fn number(&mut self, cx: &mut Context, key: &'static str) -> Option<f64> {
        let v = self.take(key)?;
        match v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        {
            Some(n) if n.is_finite() && n >= 0.0 => Some(n),
            _ => {
                cx.error(&self.at(key), format!("{v} is not a non-negative number"));
                None
            }
        }
    }

    pub(crate) fn array(&mut self, cx: &mut Context, key: &'static str) -> &'a [Value] {
        match self.take(key) {
            None => &[],
            Some(Value::Array(a)) => a,
            Some(_) => {
                cx.error(&self.at(key), "must be an array");
                &[]
            }
        }
    }

    /// Accepts a field without effect, noting it when it is set.
    pub(crate) fn note(&mut self, cx: &mut Context, key: &'static str, why: &str) {
        if self.take(key).is_some() {
            cx.notes.push(format!("{} ignored: {why}", self.at(key)));
        }
    }

    /// Accepts fields an export carries that describe the app's status, not what to run.
    pub(crate) fn skip(&mut self, keys: &[&'static str]) {
        self.taken.extend_from_slice(keys);
    }

    /// Reports every field not taken that has a value; `hints` say what to use instead.
    pub(crate) fn finish(self, cx: &mut Context, hints: &[(&str, &str)]) {
        for (key, value) in self.map {
            if self.taken.contains(&key.as_str()) || is_empty(value) {
                continue;
            }
            let hint = hints
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, h)| *h)
                .unwrap_or("");
            cx.unsupported(&self.at(key), hint);
        }
    }
}

/// A name the job file accepts, made from an app id or a family: `/shop/web` → `shop-web`.
pub(crate) fn job_name(cx: &mut Context, field: &str, raw: &str) -> String {
    let name: String = raw
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !valid_name(&name) {
        cx.error(
            field,
            format!("'{raw}' does not make a job name (1 to 64 letters, digits, '-', '_')"),
        );
    }
    name
}

/// Shoal's resource text for the scalars given: `cpus:0.5;mem:128`.
pub(crate) fn resource_text(scalars: &[(&str, f64)]) -> String {
    scalars
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(n, v)| format!("{n}:{}", round_milli(*v)))
        .collect::<Vec<_>>()
        .join(";")
}

pub(crate) fn round_milli(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A command line from an argument vector, quoted for `sh -c`.
pub(crate) fn shell_join(cx: &mut Context, field: &str, args: &[Value]) -> Option<String> {
    let mut words = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a.as_str() {
            Some(s) => words.push(s),
            None => {
                cx.error(&format!("{field}[{i}]"), "must be a string");
                return None;
            }
        }
    }
    match shlex::try_join(words) {
        Ok(s) => Some(s),
        Err(e) => {
            cx.error(field, e.to_string());
            None
        }
    }
}

/// A port's name for the job file: the given one made valid, or `port<i>`.
pub(crate) fn port_name(name: Option<&str>, index: usize, taken: &[String]) -> String {
    let base = match name {
        Some(n) if !n.is_empty() => n
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        _ => format!("port{index}"),
    };
    let mut name = base.clone();
    let mut n = 1;
    while taken
        .iter()
        .any(|t| t.split(':').next() == Some(name.as_str()))
    {
        n += 1;
        name = format!("{base}_{n}");
    }
    name
}

/// `environment`-style variables: a map of strings (Marathon) to the job file's `env`.
pub(crate) fn env_map(
    cx: &mut Context,
    field: &str,
    value: Option<&Value>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(value) = value else { return env };
    let Some(map) = value.as_object() else {
        cx.error(field, "must be an object of strings");
        return env;
    };
    for (k, v) in map {
        match v {
            Value::String(s) => {
                env.insert(k.clone(), s.clone());
            }
            Value::Number(n) => {
                env.insert(k.clone(), n.to_string());
            }
            Value::Bool(b) => {
                env.insert(k.clone(), b.to_string());
            }
            _ => cx.unsupported(
                &format!("{field}.{k}"),
                "secret references (Shoal has no secret store; give the value)",
            ),
        }
    }
    env
}
