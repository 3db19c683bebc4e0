//! `tf.train.Example` / `tf.train.SequenceExample` messages (hand-written prost structs, field
//! numbers as in `tensorflow/core/example/{example,feature}.proto`) and their JSON forms.
//!
//! JSON conventions (used by `kiln inspect` and the golden-file tests):
//! * floats are the `float32` values widened to `f64` and printed with full precision
//!   (shortest representation that round-trips the f64, e.g. `0.10000000149011612`), like
//!   TensorFlow's `MessageToJson`; NaN and infinities (not representable in JSON) print as the
//!   strings `"NaN"`, `"Infinity"`, `"-Infinity"`;
//! * `bytes` values print as a JSON string when they are valid UTF-8, otherwise as an object
//!   `{"base64": "<standard base64>"}` (unambiguous, lossless);
//! * maps are printed in key order (deterministic).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// `tf.train.Example { Features features = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Example {
    /// The features.
    #[prost(message, optional, tag = "1")]
    pub features: Option<Features>,
}

/// `tf.train.Features { map<string, Feature> feature = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Features {
    /// Name -> feature.
    #[prost(btree_map = "string, message", tag = "1")]
    pub feature: BTreeMap<String, Feature>,
}

/// `tf.train.Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
/// Int64List int64_list = 3; } }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Feature {
    /// The value list (None if no kind is set).
    #[prost(oneof = "feature::Kind", tags = "1, 2, 3")]
    pub kind: Option<feature::Kind>,
}

/// The `Feature.kind` oneof.
pub mod feature {
    /// One of the three list kinds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// `bytes_list = 1`
        #[prost(message, tag = "1")]
        BytesList(super::BytesList),
        /// `float_list = 2`
        #[prost(message, tag = "2")]
        FloatList(super::FloatList),
        /// `int64_list = 3`
        #[prost(message, tag = "3")]
        Int64List(super::Int64List),
    }
}

/// `tf.train.BytesList { repeated bytes value = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct BytesList {
    /// Values.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub value: Vec<Vec<u8>>,
}

/// `tf.train.FloatList { repeated float value = 1 [packed = true]; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct FloatList {
    /// Values.
    #[prost(float, repeated, tag = "1")]
    pub value: Vec<f32>,
}

/// `tf.train.Int64List { repeated int64 value = 1 [packed = true]; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Int64List {
    /// Values.
    #[prost(int64, repeated, tag = "1")]
    pub value: Vec<i64>,
}

/// `tf.train.FeatureList { repeated Feature feature = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureList {
    /// One feature per time step.
    #[prost(message, repeated, tag = "1")]
    pub feature: Vec<Feature>,
}

/// `tf.train.FeatureLists { map<string, FeatureList> feature_list = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureLists {
    /// Name -> feature list.
    #[prost(btree_map = "string, message", tag = "1")]
    pub feature_list: BTreeMap<String, FeatureList>,
}

/// `tf.train.SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct SequenceExample {
    /// Per-sequence features.
    #[prost(message, optional, tag = "1")]
    pub context: Option<Features>,
    /// Per-step features.
    #[prost(message, optional, tag = "2")]
    pub feature_lists: Option<FeatureLists>,
}

impl Feature {
    /// An `int64_list` feature.
    pub fn int64s(v: impl Into<Vec<i64>>) -> Feature {
        Feature {
            kind: Some(feature::Kind::Int64List(Int64List { value: v.into() })),
        }
    }
    /// A `float_list` feature.
    pub fn floats(v: impl Into<Vec<f32>>) -> Feature {
        Feature {
            kind: Some(feature::Kind::FloatList(FloatList { value: v.into() })),
        }
    }
    /// A `bytes_list` feature.
    pub fn bytes<B: Into<Vec<u8>>>(v: impl IntoIterator<Item = B>) -> Feature {
        Feature {
            kind: Some(feature::Kind::BytesList(BytesList {
                value: v.into_iter().map(Into::into).collect(),
            })),
        }
    }
    /// `"bytes_list"`, `"float_list"`, `"int64_list"` or `None` when no kind is set.
    pub fn kind_name(&self) -> Option<&'static str> {
        match &self.kind {
            Some(feature::Kind::BytesList(_)) => Some("bytes_list"),
            Some(feature::Kind::FloatList(_)) => Some("float_list"),
            Some(feature::Kind::Int64List(_)) => Some("int64_list"),
            None => None,
        }
    }
}

impl Example {
    /// Parse a serialized Example; `context` (e.g. "file.tfrecord record 3") names the source.
    pub fn parse(bytes: &[u8], context: &str) -> Result<Example> {
        Example::decode(bytes).map_err(|e| Error::Protobuf {
            context: context.to_string(),
            message: e.to_string(),
        })
    }

    /// An Example from (name, feature) pairs.
    pub fn from_features<S: Into<String>>(
        features: impl IntoIterator<Item = (S, Feature)>,
    ) -> Self {
        Example {
            features: Some(Features {
                feature: features.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            }),
        }
    }

    /// The features map (empty if unset).
    pub fn feature_map(&self) -> BTreeMap<String, Feature> {
        self.features.clone().unwrap_or_default().feature
    }
}

impl SequenceExample {
    /// Parse a serialized SequenceExample.
    pub fn parse(bytes: &[u8], context: &str) -> Result<SequenceExample> {
        SequenceExample::decode(bytes).map_err(|e| Error::Protobuf {
            context: context.to_string(),
            message: e.to_string(),
        })
    }
}

/// A float as JSON: the f32 widened to f64, full precision; non-finite values as strings.
pub fn float_json(v: f32) -> Value {
    let d = v as f64;
    match serde_json::Number::from_f64(d) {
        Some(n) => Value::Number(n),
        None if d.is_nan() => Value::String("NaN".into()),
        None if d > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// A bytes value as JSON: a string when valid UTF-8, else `{"base64": "..."}`.
pub fn bytes_json(v: &[u8]) -> Value {
    match std::str::from_utf8(v) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "base64": BASE64.encode(v) }),
    }
}

/// The values of a feature as a JSON array.
pub fn feature_values_json(f: &Feature) -> Value {
    match &f.kind {
        Some(feature::Kind::BytesList(l)) => l.value.iter().map(|b| bytes_json(b)).collect(),
        Some(feature::Kind::FloatList(l)) => l.value.iter().map(|v| float_json(*v)).collect(),
        Some(feature::Kind::Int64List(l)) => l.value.iter().map(|v| json!(v)).collect(),
        None => Value::Array(vec![]),
    }
}

/// A feature as `{"kind": "int64_list", "value": [...]}` (`kind` is null when unset).
pub fn feature_tagged_json(f: &Feature) -> Value {
    json!({ "kind": f.kind_name(), "value": feature_values_json(f) })
}

fn features_json(f: Option<&Features>, tagged: bool) -> Value {
    let mut m = Map::new();
    if let Some(f) = f {
        for (k, v) in &f.feature {
            let j = if tagged {
                feature_tagged_json(v)
            } else {
                feature_values_json(v)
            };
            m.insert(k.clone(), j);
        }
    }
    Value::Object(m)
}

/// An Example as JSON: feature name -> list of values (`tagged = false`, the `kiln inspect`
/// form) or feature name -> `{"kind", "value"}` (`tagged = true`, the golden-file form).
pub fn example_to_json(e: &Example, tagged: bool) -> Value {
    features_json(e.features.as_ref(), tagged)
}

/// A SequenceExample as `{"context": {name: [values]}, "feature_lists": {name: [[values]...]}}`.
pub fn sequence_example_to_json(e: &SequenceExample) -> Value {
    let mut lists = Map::new();
    if let Some(fl) = &e.feature_lists {
        for (k, v) in &fl.feature_list {
            lists.insert(
                k.clone(),
                Value::Array(v.feature.iter().map(feature_values_json).collect()),
            );
        }
    }
    json!({
        "context": features_json(e.context.as_ref(), false),
        "feature_lists": Value::Object(lists),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_field_numbers() {
        let e = Example::from_features([("a", Feature::int64s(vec![1]))]);
        let b = e.encode_to_vec();
        // Example.features(1) { Features.feature(1) { key(1)="a", value(2) { int64_list(3) { 1 } } } }
        assert_eq!(
            b,
            vec![
                0x0a, 0x0c, 0x0a, 0x0a, 0x0a, 0x01, b'a', 0x12, 0x05, 0x1a, 0x03, 0x0a, 0x01, 0x01
            ]
        );
        let back = Example::parse(&b, "t").unwrap();
        assert_eq!(back, e);
        assert_eq!(example_to_json(&back, false), json!({"a": [1]}),);
    }

    #[test]
    fn json_forms() {
        let f = Feature::floats(vec![0.1f32, f32::NAN]);
        assert_eq!(
            feature_tagged_json(&f),
            json!({"kind": "float_list", "value": [0.10000000149011612, "NaN"]})
        );
        assert_eq!(bytes_json(&[0xff, 0x00]), json!({"base64": "/wA="}));
        // RFC 4648 test vectors (standard alphabet, padded).
        for (raw, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(BASE64.encode(raw), b64);
        }
    }
}
