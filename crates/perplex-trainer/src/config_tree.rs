//! How a run config is put together, the same way in every process: layers of TOML tables merged
//! in a fixed order, then one strict deserializer over the merged tree.
//!
//! Layers, lowest first: built-in defaults (`model.type`, `loss.type`, `optim.type`), the file,
//! `PERPLEX__SECTION__KEY` environment variables (sorted by name), `--set` overrides (in order).
//! Tables merge key by key; anything else replaces.
//!
//! Environment and `--set` values are text. A quoted string, an array or an inline table is parsed
//! as TOML when the layer is read; any other text is kept as written and takes the type of the
//! field it lands in: a string field gets the text exactly (`0042` stays `0042`), a number or
//! boolean field parses it (an integer field rejects `3.5`).
//!
//! File values are typed by TOML and taken strictly: a string is never read as a number
//! (`label_smoothing = '0.1'` is an error), a float never as an integer (`epochs = 3.5` is an
//! error); an integer is accepted where a float is expected.
//!
//! An override that sets a section's `type` to another value than the file (or the defaults)
//! starts that section from the new type's defaults: the lower layers' keys of that section are
//! dropped (and named in a warning), the override layers' keys are kept.
//!
//! The deserializer always presents a table's `type` key first, so `typetag` never buffers the
//! other keys (whose conversion rules would then differ), and every error names the full key
//! path and where the value came from.
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The built-in defaults.
    Default,
    /// A config file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A `--set` override (as given).
    Set(String),
}

impl Source {
    fn is_override(&self) -> bool {
        matches!(self, Source::Env(_) | Source::Set(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the defaults"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Set(o) => write!(f, "`--set {o}`"),
        }
    }
}

/// The merged config tree.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A table; keys in a fixed order (sorted for files, then in order of arrival).
    Table(Vec<(String, Node)>),
    /// An array (from a file, or an override written as a TOML array).
    Array(Vec<Node>, Source),
    /// A typed TOML scalar (string, integer, float, boolean, datetime).
    Scalar(toml::Value, Source),
    /// Override text whose type is decided by the field it lands in.
    Raw(String, Source),
}

impl Node {
    fn empty() -> Self {
        Node::Table(Vec::new())
    }

    /// A node from a parsed TOML value.
    pub(crate) fn from_toml(value: toml::Value, source: &Source) -> Self {
        match value {
            toml::Value::Table(t) => Node::Table(
                t.into_iter()
                    .map(|(k, v)| (k, Node::from_toml(v, source)))
                    .collect(),
            ),
            toml::Value::Array(a) => Node::Array(
                a.into_iter().map(|v| Node::from_toml(v, source)).collect(),
                source.clone(),
            ),
            scalar => Node::Scalar(scalar, source.clone()),
        }
    }

    /// Override text: quoted strings, arrays and inline tables are parsed as TOML, anything else
    /// stays raw text.
    fn from_text(text: &str, source: &Source) -> Self {
        let t = text.trim();
        if t.starts_with(['"', '\'', '[', '{']) {
            if let Ok(mut table) = toml::from_str::<toml::Table>(&format!("v = {t}")) {
                if let Some(v) = table.remove("v") {
                    return Node::from_toml(v, source);
                }
            }
        }
        Node::Raw(text.to_string(), source.clone())
    }

    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Table(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a scalar string or raw value.
    fn text(&self) -> Option<&str> {
        match self {
            Node::Scalar(toml::Value::String(s), _) | Node::Raw(s, _) => Some(s),
            _ => None,
        }
    }

    /// Sets `path` (dotted, already split) to `value`, creating tables on the way; a table value
    /// merges into an existing table.
    fn set(&mut self, path: &[String], value: Node) {
        let nested = path
            .iter()
            .rev()
            .fold(value, |v, k| Node::Table(vec![(k.clone(), v)]));
        self.merge(nested);
    }

    /// Deep merge: `upper`'s tables merge into this one's, anything else replaces.
    pub(crate) fn merge(&mut self, upper: Node) {
        match (self, upper) {
            (Node::Table(lower), Node::Table(upper)) => {
                for (k, v) in upper {
                    match lower.iter_mut().find(|(lk, _)| *lk == k) {
                        Some((_, slot)) => slot.merge(v),
                        None => lower.push((k, v)),
                    }
                }
            }
            (slot, upper) => *slot = upper,
        }
    }

    /// Every leaf under this node as (dotted path below it, source).
    fn leaves(&self, prefix: &str, out: &mut Vec<(String, Source)>) {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match self {
            Node::Table(entries) => {
                for (k, v) in entries {
                    v.leaves(&join(k), out);
                }
            }
            Node::Array(_, s) | Node::Scalar(_, s) | Node::Raw(_, s) => {
                out.push((prefix.to_string(), s.clone()))
            }
        }
    }
}

/// A config error before it becomes a [`crate::TrainerError`]: what, where in the tree, and from
/// which layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoadError {
    /// The layer the offending value came from, when known.
    pub source: Option<Source>,
    /// What is wrong, starting with the key path.
    pub message: String,
}

/// The overrides of one load: environment variables (name, value) and `--set` entries.
pub(crate) struct Layers<'a> {
    pub file: Option<&'a Path>,
    pub env: Vec<(String, String)>,
    pub overrides: &'a [String],
}

/// Prefix of environment overrides, with its separator.
const ENV_PREFIX: &str = "PERPLEX__";

/// The sections whose `type` picks an implementation, and their defaults.
const DEFAULT_TYPES: &[(&str, &str)] = &[
    ("model", "gru"),
    ("loss", "softmax_cross_entropy"),
    ("optim", "adam"),
];

/// `PERPLEX__…` variables of this process, sorted by name.
pub(crate) fn env_overrides() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    v.sort();
    v
}

/// Splits a `--set` entry into its key path and value text.
fn parse_override(o: &str) -> Result<(Vec<String>, &str), LoadError> {
    let bad = |m: &str| LoadError {
        source: Some(Source::Set(o.to_string())),
        message: m.into(),
    };
    let (key, value) = o
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. trainer.epochs=3"))?;
    let path = key_path(key.trim(), ".")
        .ok_or_else(|| bad("the key must be dotted names like trainer.epochs"))?;
    Ok((path, value.trim()))
}

fn key_path(key: &str, sep: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = key.split(sep).map(str::to_string).collect();
    parts
        .iter()
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(parts)
}

/// Merges the layers. Returns the tree and the warnings to log (keys dropped by a type switch).
pub(crate) fn merge_layers(layers: &Layers<'_>) -> Result<(Node, Vec<String>), LoadError> {
    let mut base = Node::empty();
    if let Some(f) = layers.file {
        let source = Source::File(f.to_path_buf());
        let text = std::fs::read_to_string(f).map_err(|e| LoadError {
            source: Some(source.clone()),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "file not found".into()
            } else {
                e.to_string()
            },
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| LoadError {
            source: Some(source.clone()),
            message: e.to_string().trim_end().to_string(),
        })?;
        base = Node::from_toml(toml::Value::Table(table), &source);
    }
    // The override layers, each entry as (key path, value node).
    let mut entries: Vec<(Vec<String>, Node)> = Vec::new();
    for (name, value) in &layers.env {
        let source = Source::Env(name.clone());
        let rest = &name[ENV_PREFIX.len()..];
        let path = key_path(&rest.to_lowercase(), "__").ok_or_else(|| LoadError {
            source: Some(source.clone()),
            message: "expected PERPLEX__SECTION__KEY (names joined by `__`)".into(),
        })?;
        entries.push((path, Node::from_text(value, &source)));
    }
    for o in layers.overrides {
        let (path, value) = parse_override(o)?;
        entries.push((path, Node::from_text(value, &Source::Set(o.clone()))));
    }
    // A section without `type` keeps the default implementation; a `[model]` that gives
    // `init_from` (in any layer) and no `type` is a pretrained transformers directory.
    let init_from = base.get("model").and_then(|s| s.get("init_from")).is_some()
        || entries
            .iter()
            .any(|(p, _)| p.len() == 2 && p[0] == "model" && p[1] == "init_from");
    let typed_by_override = |section: &str| {
        entries
            .iter()
            .any(|(p, _)| p.len() == 2 && p[0] == section && p[1] == "type")
    };
    for (section, ty) in DEFAULT_TYPES {
        let has_type = base.get(section).and_then(|s| s.get("type")).is_some();
        if !has_type {
            let ty = if *section == "model" && init_from && !typed_by_override(section) {
                "pretrained"
            } else {
                ty
            };
            base.set(
                &[section.to_string(), "type".into()],
                Node::Scalar(toml::Value::String(ty.to_string()), Source::Default),
            );
        }
    }
    let mut upper = Node::empty();
    for (path, value) in entries {
        upper.set(&path, value);
    }

    // A section whose type an override changes starts from the new type's defaults.
    let mut warnings = Vec::new();
    if let (Node::Table(upper_sections), Node::Table(base_sections)) = (&upper, &mut base) {
        for (section, over) in upper_sections {
            let Some(new_type) = over.get("type") else {
                continue;
            };
            let Some((_, lower)) = base_sections.iter_mut().find(|(k, _)| k == section) else {
                continue;
            };
            let old_type = lower.get("type").and_then(Node::text);
            if old_type.is_none() || old_type == new_type.text() {
                continue;
            }
            let mut dropped = Vec::new();
            lower.leaves("", &mut dropped);
            let dropped: Vec<(String, Source)> = dropped
                .into_iter()
                .filter(|(k, s)| k != "type" && !s.is_override())
                .collect();
            *lower = Node::empty();
            if dropped.is_empty() {
                continue;
            }
            let by = match new_type {
                Node::Raw(_, s) | Node::Scalar(_, s) | Node::Array(_, s) => s.to_string(),
                Node::Table(_) => "an override".into(),
            };
            let mut sources: Vec<&Source> = Vec::new();
            for (_, s) in &dropped {
                if !sources.contains(&s) {
                    sources.push(s);
                }
            }
            let parts: Vec<String> = sources
                .iter()
                .map(|s| {
                    let keys: Vec<&str> = dropped
                        .iter()
                        .filter(|(_, t)| t == *s)
                        .map(|(k, _)| k.as_str())
                        .collect();
                    format!("{} from {s}", keys.join(", "))
                })
                .collect();
            warnings.push(format!(
                "{by} replaced [{section}]: dropped {}",
                parts.join("; ")
            ));
        }
    }
    base.merge(upper);
    Ok((base, warnings))
}

// ---------------------------------------------------------------------------------------------
// The deserializer.

/// The error type of [`De`]. `unknown_variant` keeps the accepted names so that the message can
/// say what kind of name was expected.
#[derive(Debug, Clone)]
pub(crate) struct DeError {
    message: String,
    unknown: Option<(String, &'static [&'static str])>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            unknown: None,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        // The accepted names are in the text too: across `typetag`'s erasure only the text
        // survives (a model's `positions`, say).
        let names = expected
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        DeError {
            message: format!("unknown variant `{variant}`; expected one of {names}"),
            unknown: Some((variant.to_string(), expected)),
        }
    }
}

/// The first error, located. Errors crossing `typetag`'s type erasure lose their structure, so
/// the innermost deserializer records where it failed and the outer ones keep that.
#[derive(Default)]
pub(crate) struct Ctx {
    first: RefCell<Option<LoadError>>,
}

impl Ctx {
    /// The located error of a failed deserialization.
    pub(crate) fn take(&self, fallback: DeError) -> LoadError {
        self.first.borrow_mut().take().unwrap_or(LoadError {
            source: None,
            message: fallback.message,
        })
    }

    fn record(&self, path: &str, source: Option<&Source>, e: &DeError) {
        let mut first = self.first.borrow_mut();
        if first.is_some() {
            return;
        }
        let message = match &e.unknown {
            Some((name, expected)) => unknown_name(path, name, expected),
            None => e.message.clone(),
        };
        let message = if path.is_empty() {
            message
        } else {
            format!("{path}: {message}")
        };
        *first = Some(LoadError {
            source: source.cloned(),
            message,
        });
    }
}

/// "unknown optimiser `x`; registered optimisers: `adam`, `sgd`".
fn unknown_name(path: &str, name: &str, expected: &[&str]) -> String {
    let list = expected
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let section = path.split('.').next().unwrap_or("");
    let is_type = path == "type" || path.ends_with(".type");
    let what = match (section, is_type) {
        ("model", true) => "model",
        ("loss", true) => "loss",
        ("optim", true) => "optimiser",
        ("schedule", true) => "schedule",
        ("data", false) if path == "data.tokenizer" => "tokenizer",
        _ => "",
    };
    match what {
        "" => format!("unknown value `{name}`; accepted: {list}"),
        "loss" => format!(
            "unknown loss `{name}`; registered losses: {list} (`perplex losses` describes them)"
        ),
        "tokenizer" => format!("unknown tokenizer `{name}`; accepted tokenizers: {list}"),
        w => format!("unknown {w} `{name}`; registered {w}s: {list}"),
    }
}

/// Deserializes one node of the merged tree.
pub(crate) struct De<'a> {
    pub node: &'a Node,
    pub path: String,
    pub ctx: &'a Ctx,
}

impl<'a> De<'a> {
    fn source(&self) -> Option<&'a Source> {
        match self.node {
            Node::Array(_, s) | Node::Scalar(_, s) | Node::Raw(_, s) => Some(s),
            Node::Table(_) => None,
        }
    }

    fn child(&self, key: &str, node: &'a Node) -> De<'a> {
        De {
            node,
            path: if self.path.is_empty() {
                key.to_string()
            } else {
                format!("{}.{key}", self.path)
            },
            ctx: self.ctx,
        }
    }

    /// Records an error at this node (unless a deeper one was recorded first).
    fn locate<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.inspect_err(|e| self.ctx.record(&self.path, self.source(), e))
    }

    fn unexpected(&self) -> de::Unexpected<'a> {
        match self.node {
            Node::Table(_) => de::Unexpected::Map,
            Node::Array(..) => de::Unexpected::Seq,
            Node::Raw(s, _) => de::Unexpected::Str(s),
            Node::Scalar(v, _) => match v {
                toml::Value::String(s) => de::Unexpected::Str(s),
                toml::Value::Integer(i) => de::Unexpected::Signed(*i),
                toml::Value::Float(f) => de::Unexpected::Float(*f),
                toml::Value::Boolean(b) => de::Unexpected::Bool(*b),
                _ => de::Unexpected::Other("a date-time"),
            },
        }
    }

    fn invalid<T>(&self, exp: &dyn de::Expected) -> Result<T, DeError> {
        Err(de::Error::invalid_type(self.unexpected(), exp))
    }

    fn visit_table<V: Visitor<'a>>(&self, visitor: V) -> Result<V::Value, DeError> {
        match self.node {
            Node::Table(entries) => {
                // `type` first: typetag then hands the rest straight to the implementation.
                let mut order: Vec<&'a (String, Node)> = entries.iter().collect();
                order.sort_by_key(|(k, _)| k.as_str() != "type");
                visitor.visit_map(TableAccess {
                    parent: self,
                    entries: order.into_iter(),
                    value: None,
                })
            }
            _ => self.invalid(&visitor),
        }
    }

    fn visit_array<V: Visitor<'a>>(&self, visitor: V) -> Result<V::Value, DeError> {
        match self.node {
            Node::Array(items, _) => visitor.visit_seq(ArrayAccess {
                parent: self,
                items: items.iter().enumerate(),
            }),
            _ => self.invalid(&visitor),
        }
    }

    fn visit_scalar<V: Visitor<'a>>(
        &self,
        value: &toml::Value,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match value {
            toml::Value::String(s) => visitor.visit_str(s),
            toml::Value::Integer(i) => visitor.visit_i64(*i),
            toml::Value::Float(f) => visitor.visit_f64(*f),
            toml::Value::Boolean(b) => visitor.visit_bool(*b),
            other => visitor.visit_string(other.to_string()),
        }
    }

    /// Raw text read as a TOML value, if it is one.
    fn parse_raw(text: &str) -> Option<toml::Value> {
        toml::from_str::<toml::Table>(&format!("v = {}", text.trim()))
            .ok()
            .and_then(|mut t| t.remove("v"))
    }

    fn integer<V: Visitor<'a>>(&self, visitor: V) -> Result<V::Value, DeError> {
        let value = match self.node {
            Node::Scalar(v, _) => Some(v.clone()),
            Node::Raw(s, _) => Self::parse_raw(s),
            _ => None,
        };
        match value {
            Some(toml::Value::Integer(i)) => visitor.visit_i64(i),
            Some(toml::Value::Float(f)) => {
                Err(de::Error::invalid_type(de::Unexpected::Float(f), &visitor))
            }
            _ => match self.node {
                // Text such as `0042` or `+7`, which TOML does not take as an integer.
                Node::Raw(s, _) => match s.trim().parse::<i64>() {
                    Ok(i) => visitor.visit_i64(i),
                    Err(_) => self.invalid(&visitor),
                },
                _ => self.invalid(&visitor),
            },
        }
    }

    fn float<V: Visitor<'a>>(&self, visitor: V) -> Result<V::Value, DeError> {
        let value = match self.node {
            Node::Scalar(v, _) => Some(v.clone()),
            Node::Raw(s, _) => Self::parse_raw(s),
            _ => None,
        };
        match value {
            Some(toml::Value::Integer(i)) => visitor.visit_i64(i),
            Some(toml::Value::Float(f)) => visitor.visit_f64(f),
            _ => match self.node {
                // Text such as `.5` or `1.`, which TOML does not take as a float.
                Node::Raw(s, _) => match s.trim().parse::<f64>() {
                    Ok(f) => visitor.visit_f64(f),
                    Err(_) => self.invalid(&visitor),
                },
                _ => self.invalid(&visitor),
            },
        }
    }

    fn boolean<V: Visitor<'a>>(&self, visitor: V) -> Result<V::Value, DeError> {
        match self.node {
            Node::Scalar(toml::Value::Boolean(b), _) => visitor.visit_bool(*b),
            Node::Raw(s, _) if s.trim() == "true" => visitor.visit_bool(true),
            Node::Raw(s, _) if s.trim() == "false" => visitor.visit_bool(false),
            _ => self.invalid(&visitor),
        }
    }

    fn string<V: Visitor<'a>>(&self, visitor: V) -> Result<V::Value, DeError> {
        match self.node {
            Node::Scalar(toml::Value::String(s), _) | Node::Raw(s, _) => visitor.visit_str(s),
            _ => self.invalid(&visitor),
        }
    }
}

macro_rules! forward {
    ($how:ident: $($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                let r = self.$how(visitor);
                self.locate(r)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for De<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = match self.node {
            Node::Table(_) => self.visit_table(visitor),
            Node::Array(..) => self.visit_array(visitor),
            Node::Scalar(v, _) => self.visit_scalar(v, visitor),
            Node::Raw(s, _) => match Self::parse_raw(s) {
                Some(
                    v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
                ) => self.visit_scalar(&v, visitor),
                _ => visitor.visit_str(s),
            },
        };
        self.locate(r)
    }

    forward!(integer: deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128);
    forward!(float: deserialize_f32 deserialize_f64);
    forward!(boolean: deserialize_bool);
    forward!(string: deserialize_char deserialize_str deserialize_string deserialize_identifier);
    forward!(visit_array: deserialize_seq);
    forward!(visit_table: deserialize_map);

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // TOML has no null: a present key is `Some`.
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let r = self.invalid(&visitor);
        self.locate(r)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let r = match self.node {
            Node::Scalar(toml::Value::String(s), _) | Node::Raw(s, _) => {
                let variant: de::value::StrDeserializer<'_, DeError> =
                    s.as_str().into_deserializer();
                visitor.visit_enum(variant)
            }
            Node::Table(entries) if entries.len() == 1 => visitor.visit_enum(EnumTable {
                parent: &self,
                key: &entries[0].0,
                value: &entries[0].1,
            }),
            _ => self.invalid(&visitor),
        };
        self.locate(r)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct TableAccess<'p, 'a> {
    parent: &'p De<'a>,
    entries: std::vec::IntoIter<&'a (String, Node)>,
    value: Option<&'a (String, Node)>,
}

impl<'de> MapAccess<'de> for TableAccess<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let child = self.parent.child(&entry.0, &entry.1);
        // An unknown field fails here: name the key and where it came from.
        let mut sources = Vec::new();
        entry.1.leaves("", &mut sources);
        let source = sources.first().map(|(_, s)| s);
        seed.deserialize(entry.0.as_str().into_deserializer())
            .map(Some)
            .inspect_err(|e| self.parent.ctx.record(&child.path, source, e))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let entry = self
            .value
            .take()
            .expect("next_value_seed after next_key_seed");
        seed.deserialize(self.parent.child(&entry.0, &entry.1))
    }
}

struct ArrayAccess<'p, 'a> {
    parent: &'p De<'a>,
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
}

impl<'de> SeqAccess<'de> for ArrayAccess<'_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        let child = De {
            node,
            path: format!("{}[{i}]", self.parent.path),
            ctx: self.parent.ctx,
        };
        seed.deserialize(child).map(Some)
    }
}

/// An externally tagged enum written as a one-key table: `{ variant = { ... } }`.
struct EnumTable<'p, 'a> {
    parent: &'p De<'a>,
    key: &'a str,
    value: &'a Node,
}

impl<'de> de::EnumAccess<'de> for EnumTable<'_, 'de> {
    type Error = DeError;
    type Variant = De<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, De<'de>), DeError> {
        let v = seed.deserialize(self.key.into_deserializer())?;
        Ok((v, self.parent.child(self.key, self.value)))
    }
}

impl<'de> de::VariantAccess<'de> for De<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

/// Deserializes `T` from a merged tree; the error is located (key path, source).
pub(crate) fn deserialize<T: de::DeserializeOwned>(node: &Node) -> Result<T, LoadError> {
    let ctx = Ctx::default();
    let de = De {
        node,
        path: String::new(),
        ctx: &ctx,
    };
    T::deserialize(de).map_err(|e| ctx.take(e))
}
