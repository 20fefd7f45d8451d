//! Mesos-style JSON for protobuf messages (what stout's `JSON::protobuf`
//! writes and `protobuf::parse` reads).
//!
//! Writing:
//! * keys are the proto field names (`framework_id`, not `frameworkId`);
//! * only fields that are set are written (proto2 defaults of unset
//!   fields are not); empty repeated and map fields are omitted;
//! * enums are written as their value names (`"TASK_RUNNING"`); a number
//!   unknown to the enum is written as a number;
//! * 64-bit integers are JSON numbers, not strings;
//! * `bytes` are standard, padded base64;
//! * non-finite doubles are the strings `"NaN"`, `"Infinity"`,
//!   `"-Infinity"`;
//! * map fields are JSON objects with keys in sorted order.
//!
//! Reading:
//! * fields are looked up by proto name (the lowerCamelCase JSON name is
//!   accepted as a fallback); unknown keys are ignored;
//! * `null` means "unset", for fields as well as inside arrays and maps;
//! * enums are read from their names (numbers of known values are also
//!   accepted); an unknown name is dropped on optional and repeated fields
//!   (as Mesos does) and is an error on required fields;
//! * numbers may also be given as strings (`"5050"`, `"1.5"`), doubles
//!   also as `"NaN"`, `"Infinity"`, `"-Infinity"`; integral floats such
//!   as `5050.0` are accepted for integer fields;
//! * `bytes` accept standard or URL-safe base64, with or without padding;
//! * required fields must be present (Mesos rejects such input with
//!   "Missing required fields"), checked at every nesting level.
//!
//! Every error carries the path of the offending field, e.g.
//! `subscribe.framework_info.capabilities[0].type`. No input makes these
//! functions panic; nesting deeper than [`MAX_DEPTH`] messages is an
//! error.

use std::fmt;

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use prost_reflect::{
    Cardinality, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};
use serde_json::{Map, Number, Value as Json};

/// Deepest nesting of messages accepted when reading JSON.
pub const MAX_DEPTH: usize = 64;

// ---------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSegment {
    Field(String),
    Index(usize),
    Key(String),
}

/// Error from reading Mesos JSON: what went wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    message_type: Option<String>,
    // Innermost segment first; reversed when rendered.
    path_rev: Vec<PathSegment>,
    message: String,
}

impl JsonError {
    fn new(message: impl Into<String>) -> Self {
        JsonError {
            message_type: None,
            path_rev: Vec::new(),
            message: message.into(),
        }
    }

    fn in_field(mut self, name: &str) -> Self {
        self.path_rev.push(PathSegment::Field(name.to_owned()));
        self
    }

    fn at_index(mut self, index: usize) -> Self {
        self.path_rev.push(PathSegment::Index(index));
        self
    }

    fn at_key(mut self, key: &str) -> Self {
        self.path_rev.push(PathSegment::Key(key.to_owned()));
        self
    }

    fn for_type(mut self, full_name: &str) -> Self {
        self.message_type = Some(full_name.to_owned());
        self
    }

    /// Path of the offending field, e.g. `accept.operations[0].type`;
    /// empty when the error concerns the whole document.
    pub fn path(&self) -> String {
        let mut out = String::new();
        for segment in self.path_rev.iter().rev() {
            match segment {
                PathSegment::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                PathSegment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
                PathSegment::Key(key) => {
                    out.push('[');
                    out.push_str(&Json::String(key.clone()).to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// What went wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Full name of the message type being read, when known.
    pub fn message_type(&self) -> Option<&str> {
        self.message_type.as_deref()
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid JSON")?;
        if let Some(ty) = &self.message_type {
            write!(f, " for {ty}")?;
        }
        let path = self.path();
        if !path.is_empty() {
            write!(f, " at `{path}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for JsonError {}

// ---------------------------------------------------------------------
// Public API.
// ---------------------------------------------------------------------

/// Converts a message to its Mesos JSON form.
///
/// A message nested deeper than protobuf's decoding limit (100 levels,
/// only reachable with recursive types such as `ContainerID.parent`)
/// cannot be reflected and yields `null` instead of panicking.
pub fn to_json_value<M: ReflectMessage>(message: &M) -> Json {
    let bytes = message.encode_to_vec();
    match DynamicMessage::decode(message.descriptor(), bytes.as_slice()) {
        Ok(dynamic) => dynamic_to_json_value(&dynamic),
        Err(_) => Json::Null,
    }
}

/// Converts a message to compact Mesos JSON text.
pub fn to_json_string<M: ReflectMessage>(message: &M) -> String {
    to_json_value(message).to_string()
}

/// Converts a message to compact Mesos JSON bytes.
pub fn to_json_vec<M: ReflectMessage>(message: &M) -> Vec<u8> {
    to_json_string(message).into_bytes()
}

/// Reads a message from a parsed JSON value.
pub fn from_json_value<M: ReflectMessage + Default>(value: Json) -> Result<M, JsonError> {
    let descriptor = M::default().descriptor();
    let dynamic = dynamic_from_json_value(&descriptor, &value)?;
    dynamic.transcode_to::<M>().map_err(|e| {
        JsonError::new(format!("cannot convert decoded message: {e}"))
            .for_type(descriptor.full_name())
    })
}

/// Reads a message from JSON text given as bytes.
pub fn from_json_slice<M: ReflectMessage + Default>(bytes: &[u8]) -> Result<M, JsonError> {
    let value: Json = serde_json::from_slice(bytes).map_err(|e| {
        JsonError::new(format!("malformed JSON: {e}"))
            .for_type(M::default().descriptor().full_name())
    })?;
    from_json_value(value)
}

/// Reads a message from JSON text.
pub fn from_json_str<M: ReflectMessage + Default>(text: &str) -> Result<M, JsonError> {
    from_json_slice(text.as_bytes())
}

/// Reads a message from JSON text like [`from_json_str`], except that required fields may be
/// missing (protobuf's partial parsing): they read as their defaults. For readers that accept
/// what an older, lenient reader accepted.
pub fn from_json_str_partial<M: ReflectMessage + Default>(text: &str) -> Result<M, JsonError> {
    let descriptor = M::default().descriptor();
    let value: Json = serde_json::from_str(text).map_err(|e| {
        JsonError::new(format!("malformed JSON: {e}")).for_type(descriptor.full_name())
    })?;
    let dynamic = message_from_json(&descriptor, &value, 0, true)
        .map_err(|e| e.for_type(descriptor.full_name()))?;
    dynamic.transcode_to::<M>().map_err(|e| {
        JsonError::new(format!("cannot convert decoded message: {e}"))
            .for_type(descriptor.full_name())
    })
}

/// Converts a dynamic message to its Mesos JSON form.
pub fn dynamic_to_json_value(message: &DynamicMessage) -> Json {
    message_to_json(message)
}

/// Reads a dynamic message of type `descriptor` from a JSON value.
pub fn dynamic_from_json_value(
    descriptor: &MessageDescriptor,
    value: &Json,
) -> Result<DynamicMessage, JsonError> {
    message_from_json(descriptor, value, 0, false).map_err(|e| e.for_type(descriptor.full_name()))
}

// ---------------------------------------------------------------------
// Writing.
// ---------------------------------------------------------------------

fn message_to_json(message: &DynamicMessage) -> Json {
    let mut object = Map::new();
    for (field, value) in message.fields() {
        object.insert(field.name().to_owned(), field_value_to_json(&field, value));
    }
    Json::Object(object)
}

fn field_value_to_json(field: &FieldDescriptor, value: &Value) -> Json {
    let kind = field.kind();
    match value {
        Value::List(items) => Json::Array(items.iter().map(|v| value_to_json(v, &kind)).collect()),
        Value::Map(entries) => {
            let value_kind = match &kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let mut pairs: Vec<(String, Json)> = entries
                .iter()
                .map(|(k, v)| (map_key_to_string(k), value_to_json(v, &value_kind)))
                .collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(pairs.into_iter().collect())
        }
        other => value_to_json(other, &kind),
    }
}

fn map_key_to_string(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn float_to_json(f: f64) -> Json {
    if f.is_nan() {
        Json::String("NaN".to_owned())
    } else if f == f64::INFINITY {
        Json::String("Infinity".to_owned())
    } else if f == f64::NEG_INFINITY {
        Json::String("-Infinity".to_owned())
    } else {
        Number::from_f64(f).map_or(Json::Null, Json::Number)
    }
}

fn value_to_json(value: &Value, kind: &Kind) -> Json {
    match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => Json::from(*n),
        Value::I64(n) => Json::from(*n),
        Value::U32(n) => Json::from(*n),
        Value::U64(n) => Json::from(*n),
        Value::F32(f) => float_to_json(f64::from(*f)),
        Value::F64(f) => float_to_json(*f),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(enum_desc) => match enum_desc.get_value(*n) {
                Some(v) => Json::String(v.name().to_owned()),
                None => Json::from(*n),
            },
            _ => Json::from(*n),
        },
        Value::Message(m) => message_to_json(m),
        Value::List(items) => Json::Array(items.iter().map(|v| value_to_json(v, kind)).collect()),
        Value::Map(entries) => {
            let mut pairs: Vec<(String, Json)> = entries
                .iter()
                .map(|(k, v)| (map_key_to_string(k), value_to_json(v, kind)))
                .collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(pairs.into_iter().collect())
        }
    }
}

// ---------------------------------------------------------------------
// Reading.
// ---------------------------------------------------------------------

fn type_name(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// `partial`: required fields may be missing (they read as their defaults), as protobuf's
/// partial parsing allows.
fn message_from_json(
    descriptor: &MessageDescriptor,
    value: &Json,
    depth: usize,
    partial: bool,
) -> Result<DynamicMessage, JsonError> {
    if depth >= MAX_DEPTH {
        return Err(JsonError::new(format!(
            "messages nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let object = match value {
        Json::Object(object) => object,
        other => {
            return Err(JsonError::new(format!(
                "expected an object for message {}, found {}",
                descriptor.full_name(),
                type_name(other)
            )))
        }
    };

    let mut message = DynamicMessage::new(descriptor.clone());
    for (key, field_json) in object {
        if field_json.is_null() {
            continue;
        }
        let field = match descriptor
            .get_field_by_name(key)
            .or_else(|| descriptor.get_field_by_json_name(key))
        {
            Some(field) => field,
            None => continue, // Unknown keys are ignored, as in Mesos.
        };
        if let Some(value) = field_from_json(&field, field_json, depth, partial)
            .map_err(|e| e.in_field(field.name()))?
        {
            message.set_field(&field, value);
        }
    }

    for field in descriptor.fields() {
        if !partial && field.cardinality() == Cardinality::Required && !message.has_field(&field) {
            return Err(JsonError::new("missing required field").in_field(field.name()));
        }
    }

    Ok(message)
}

/// Decodes one field; `Ok(None)` means "leave unset".
fn field_from_json(
    field: &FieldDescriptor,
    json: &Json,
    depth: usize,
    partial: bool,
) -> Result<Option<Value>, JsonError> {
    let kind = field.kind();
    if field.is_map() {
        let entry = match &kind {
            Kind::Message(entry) => entry.clone(),
            _ => return Err(JsonError::new("malformed map field descriptor")),
        };
        let object = match json {
            Json::Object(object) => object,
            other => {
                return Err(JsonError::new(format!(
                    "expected an object for a map field, found {}",
                    type_name(other)
                )))
            }
        };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        let mut map = std::collections::HashMap::with_capacity(object.len());
        for (key, value_json) in object {
            if value_json.is_null() {
                continue;
            }
            let map_key = map_key_from_str(key, &key_kind).map_err(|e| e.at_key(key))?;
            match single_from_json(&value_kind, value_json, depth, partial)
                .map_err(|e| e.at_key(key))?
            {
                Single::Value(v) => {
                    map.insert(map_key, v);
                }
                Single::UnknownEnum(_) => {}
            }
        }
        return Ok(Some(Value::Map(map)));
    }

    if field.is_list() {
        let items = match json {
            Json::Array(items) => items,
            other => {
                return Err(JsonError::new(format!(
                    "expected an array for a repeated field, found {}",
                    type_name(other)
                )))
            }
        };
        let mut list = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            if item.is_null() {
                continue;
            }
            match single_from_json(&kind, item, depth, partial).map_err(|e| e.at_index(index))? {
                Single::Value(v) => list.push(v),
                Single::UnknownEnum(_) => {}
            }
        }
        return Ok(Some(Value::List(list)));
    }

    match single_from_json(&kind, json, depth, partial)? {
        Single::Value(v) => Ok(Some(v)),
        Single::UnknownEnum(name) => {
            if field.cardinality() == Cardinality::Required {
                Err(JsonError::new(format!("unknown enum value {name}")))
            } else {
                Ok(None)
            }
        }
    }
}

enum Single {
    Value(Value),
    UnknownEnum(String),
}

fn single_from_json(
    kind: &Kind,
    json: &Json,
    depth: usize,
    partial: bool,
) -> Result<Single, JsonError> {
    let value = match kind {
        Kind::Message(desc) => Value::Message(message_from_json(desc, json, depth + 1, partial)?),
        Kind::Enum(desc) => return enum_from_json(desc, json),
        Kind::Bool => Value::Bool(bool_from_json(json)?),
        Kind::String => match json {
            Json::String(s) => Value::String(s.clone()),
            other => {
                return Err(JsonError::new(format!(
                    "expected a string, found {}",
                    type_name(other)
                )))
            }
        },
        Kind::Bytes => match json {
            Json::String(s) => Value::Bytes(decode_base64(s)?.into()),
            other => {
                return Err(JsonError::new(format!(
                    "expected a base64 string, found {}",
                    type_name(other)
                )))
            }
        },
        Kind::Double => Value::F64(float_from_json(json)?),
        Kind::Float => Value::F32(float_from_json(json)? as f32),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let n = int_from_json(json)?;
            Value::I32(
                i32::try_from(n)
                    .map_err(|_| JsonError::new(format!("{n} is out of range for int32")))?,
            )
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(int_from_json(json)?),
        Kind::Uint32 | Kind::Fixed32 => {
            let n = uint_from_json(json)?;
            Value::U32(
                u32::try_from(n)
                    .map_err(|_| JsonError::new(format!("{n} is out of range for uint32")))?,
            )
        }
        Kind::Uint64 | Kind::Fixed64 => Value::U64(uint_from_json(json)?),
    };
    Ok(Single::Value(value))
}

fn enum_from_json(desc: &EnumDescriptor, json: &Json) -> Result<Single, JsonError> {
    match json {
        Json::String(name) => Ok(match desc.get_value_by_name(name) {
            Some(v) => Single::Value(Value::EnumNumber(v.number())),
            None => Single::UnknownEnum(format!("{name:?} for {}", desc.full_name())),
        }),
        Json::Number(n) => {
            let number = n.as_i64().and_then(|n| i32::try_from(n).ok());
            Ok(match number.and_then(|n| desc.get_value(n)) {
                Some(v) => Single::Value(Value::EnumNumber(v.number())),
                None => Single::UnknownEnum(format!("{n} for {}", desc.full_name())),
            })
        }
        other => Err(JsonError::new(format!(
            "expected an enum name for {}, found {}",
            desc.full_name(),
            type_name(other)
        ))),
    }
}

fn bool_from_json(json: &Json) -> Result<bool, JsonError> {
    match json {
        Json::Bool(b) => Ok(*b),
        Json::String(s) if s == "true" => Ok(true),
        Json::String(s) if s == "false" => Ok(false),
        other => Err(JsonError::new(format!(
            "expected a boolean, found {}",
            type_name(other)
        ))),
    }
}

fn float_from_json(json: &Json) -> Result<f64, JsonError> {
    match json {
        Json::Number(n) => n
            .as_f64()
            .ok_or_else(|| JsonError::new(format!("{n} is not a valid double"))),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            text => parse_number_text(text)
                .and_then(|n| n.as_f64())
                .ok_or_else(|| JsonError::new(format!("{s:?} is not a valid double"))),
        },
        other => Err(JsonError::new(format!(
            "expected a number, found {}",
            type_name(other)
        ))),
    }
}

/// Parses a numeric string with JSON number syntax (no surrounding
/// whitespace, no leading `+`).
fn parse_number_text(text: &str) -> Option<Number> {
    if text.is_empty() || text.trim() != text {
        return None;
    }
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Number(n)) => Some(n),
        _ => None,
    }
}

fn number_of(json: &Json) -> Result<Number, JsonError> {
    match json {
        Json::Number(n) => Ok(n.clone()),
        Json::String(s) => parse_number_text(s)
            .ok_or_else(|| JsonError::new(format!("{s:?} is not a valid number"))),
        other => Err(JsonError::new(format!(
            "expected a number, found {}",
            type_name(other)
        ))),
    }
}

/// An integral float (e.g. `5050.0`) within ±2^53 is accepted as an integer.
fn integral_float(f: f64) -> Option<f64> {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    (f.is_finite() && f.fract() == 0.0 && f.abs() <= LIMIT).then_some(f)
}

fn int_from_json(json: &Json) -> Result<i64, JsonError> {
    let n = number_of(json)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err(JsonError::new(format!("{n} is out of range for int64")));
    }
    n.as_f64()
        .and_then(integral_float)
        .map(|f| f as i64)
        .ok_or_else(|| JsonError::new(format!("{n} is not an integer")))
}

fn uint_from_json(json: &Json) -> Result<u64, JsonError> {
    let n = number_of(json)?;
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    if n.is_i64() {
        return Err(JsonError::new(format!("{n} is negative")));
    }
    match n.as_f64().and_then(integral_float) {
        Some(f) if f >= 0.0 => Ok(f as u64),
        Some(_) => Err(JsonError::new(format!("{n} is negative"))),
        None => Err(JsonError::new(format!("{n} is not an integer"))),
    }
}

fn map_key_from_str(key: &str, kind: &Kind) -> Result<MapKey, JsonError> {
    let as_json = Json::String(key.to_owned());
    Ok(match kind {
        Kind::String => MapKey::String(key.to_owned()),
        Kind::Bool => MapKey::Bool(bool_from_json(&as_json)?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let n = int_from_json(&as_json)?;
            MapKey::I32(
                i32::try_from(n)
                    .map_err(|_| JsonError::new(format!("{n} is out of range for int32")))?,
            )
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(int_from_json(&as_json)?),
        Kind::Uint32 | Kind::Fixed32 => {
            let n = uint_from_json(&as_json)?;
            MapKey::U32(
                u32::try_from(n)
                    .map_err(|_| JsonError::new(format!("{n} is out of range for uint32")))?,
            )
        }
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(uint_from_json(&as_json)?),
        _ => return Err(JsonError::new("unsupported map key type")),
    })
}

fn lenient_engine(alphabet: &alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

fn decode_base64(text: &str) -> Result<Vec<u8>, JsonError> {
    let standard = lenient_engine(&alphabet::STANDARD);
    match standard.decode(text) {
        Ok(bytes) => Ok(bytes),
        Err(first) => lenient_engine(&alphabet::URL_SAFE)
            .decode(text)
            .map_err(|_| JsonError::new(format!("invalid base64: {first}"))),
    }
}

#[cfg(test)]
mod tests;
