//! Request JSON -> Arrow `RecordBatch` with the model's input columns -> the trainer's
//! transform (`Transform::prepare`) and forward pass (`model::predict_logits`): the same calls
//! `kiln_trainer::export::score` (and so `kiln predict`) makes, nothing re-implemented.
//!
//! Values are raw feature values, as in the examples' columns. A categorical feature takes
//! integers (hashed as `i64`), strings (hashed as UTF-8), booleans or null; a numeric
//! feature takes numbers, booleans or null. The model directory keeps no Arrow schema, so a
//! categorical column's type is the JSON type of its values, which must be the type it had in
//! training (an id trained as an integer must be sent as a JSON integer).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use kiln_trainer::export::Model;
use kiln_trainer::transform::{CategoricalMap, Prepared, Transform};
use serde_json::{Map, Value};

use crate::{Result, ServeError};

/// How the model uses an input column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Hashed into buckets: integers and strings hash differently.
    CategoricalHash,
    /// Looked up in a vocabulary (integers as decimal text).
    CategoricalVocabulary,
    /// Normalised number.
    Numeric,
}

impl InputKind {
    /// Name in the metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::CategoricalHash => "categorical_hash",
            InputKind::CategoricalVocabulary => "categorical_vocabulary",
            InputKind::Numeric => "numeric",
        }
    }
}

/// One input feature of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Column name.
    pub name: String,
    /// How the model uses it (a column both categorical and numeric lists both, in order).
    pub kinds: Vec<InputKind>,
}

impl InputSpec {
    /// Whether a numeric transform reads this column.
    fn numeric(&self) -> bool {
        self.kinds.contains(&InputKind::Numeric)
    }
    /// Whether a categorical transform reads this column.
    fn categorical(&self) -> bool {
        self.kinds.iter().any(|k| *k != InputKind::Numeric)
    }
}

/// The input features of a transform: categorical columns then numeric ones, each once.
pub fn inputs(t: &Transform) -> Vec<InputSpec> {
    let mut out: Vec<InputSpec> = Vec::new();
    let mut add = |name: &str, kind: InputKind| {
        if let Some(s) = out.iter_mut().find(|s| s.name == name) {
            s.kinds.push(kind);
        } else {
            out.push(InputSpec {
                name: name.to_string(),
                kinds: vec![kind],
            });
        }
    };
    for c in &t.categorical {
        let kind = match c.map {
            CategoricalMap::Hash { .. } => InputKind::CategoricalHash,
            CategoricalMap::Vocabulary { .. } => InputKind::CategoricalVocabulary,
        };
        add(&c.column, kind);
    }
    for n in &t.numeric {
        add(&n.column, InputKind::Numeric);
    }
    out
}

/// The JSON type of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::String(_) => Kind::Str,
            Value::Array(_) | Value::Object(_) => Kind::Float, // refused before
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "a boolean",
            Kind::Int => "an integer",
            Kind::Float => "a fractional number",
            Kind::Str => "a string",
        }
    }
}

/// One feature's values (one per instance) -> an Arrow array of the feature's type.
fn column(spec: &InputSpec, values: &[&Value]) -> Result<ArrayRef> {
    let bad = |i: usize, m: String| {
        ServeError::InvalidArgument(format!("instance {i}: feature `{}` {m}", spec.name))
    };
    let mut kind = Kind::Null;
    let mut first = 0;
    for (i, v) in values.iter().enumerate() {
        if matches!(v, Value::Array(_) | Value::Object(_)) {
            return Err(bad(
                i,
                format!("is {v}; expected one raw value (number, string, boolean or null)"),
            ));
        }
        let k = Kind::of(v);
        if k == Kind::Str && spec.numeric() {
            return Err(bad(
                i,
                format!("is the string {v}; the model reads it as a number"),
            ));
        }
        if k == Kind::Float && spec.categorical() {
            return Err(bad(
                i,
                format!("is {v}; a categorical feature takes integers, strings or booleans"),
            ));
        }
        if k == Kind::Null {
            continue;
        }
        if kind == Kind::Null {
            kind = k;
            first = i;
        } else if kind != k
            && !(matches!(
                (kind, k),
                (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int)
            ))
        {
            return Err(bad(
                i,
                format!(
                    "is {}, but instance {first} has {}; one feature has one type",
                    k.name(),
                    kind.name()
                ),
            ));
        } else if kind == Kind::Int && k == Kind::Float {
            kind = Kind::Float;
        }
    }
    Ok(match kind {
        // All null: a numeric column is all-null floats, a categorical all-null integers.
        Kind::Null if spec.numeric() => Arc::new(Float64Array::new_null(values.len())),
        Kind::Null => Arc::new(Int64Array::new_null(values.len())),
        Kind::Bool => Arc::new(BooleanArray::from(
            values.iter().map(|v| v.as_bool()).collect::<Vec<_>>(),
        )),
        Kind::Int => {
            let mut out = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                out.push(match v {
                    Value::Null => None,
                    v => Some(v.as_i64().ok_or_else(|| {
                        bad(i, format!("is {v}, outside the 64-bit integer range"))
                    })?),
                });
            }
            Arc::new(Int64Array::from(out))
        }
        Kind::Float => Arc::new(Float64Array::from(
            values.iter().map(|v| v.as_f64()).collect::<Vec<_>>(),
        )),
        Kind::Str => Arc::new(StringArray::from(
            values.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
        )),
    })
}

/// A record batch of the model's input columns from rows (`{"instances": [{...}, ...]}`).
/// Features the model does not read (ids, the label) are ignored; a missing one is an error
/// naming it and the instance.
pub fn batch_from_rows(inputs: &[InputSpec], instances: &[Value]) -> Result<RecordBatch> {
    let mut objects: Vec<&Map<String, Value>> = Vec::with_capacity(instances.len());
    for (i, inst) in instances.iter().enumerate() {
        objects.push(inst.as_object().ok_or_else(|| {
            ServeError::InvalidArgument(format!(
                "instance {i} is {}; expected an object of named features",
                kind_name(inst)
            ))
        })?);
    }
    let mut columns = Vec::with_capacity(inputs.len());
    for spec in inputs {
        let mut values = Vec::with_capacity(objects.len());
        for (i, o) in objects.iter().enumerate() {
            values.push(o.get(&spec.name).ok_or_else(|| {
                ServeError::InvalidArgument(format!(
                    "instance {i}: missing feature `{}` (the model reads: {})",
                    spec.name,
                    names(inputs)
                ))
            })?);
        }
        columns.push(column(spec, &values)?);
    }
    build(inputs, columns, objects.len())
}

/// A record batch from columns (`{"inputs": {feature: [values...]}}`).
pub fn batch_from_columns(inputs: &[InputSpec], cols: &Map<String, Value>) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(inputs.len());
    let mut rows: Option<(usize, &str)> = None;
    for spec in inputs {
        let v = cols.get(&spec.name).ok_or_else(|| {
            ServeError::InvalidArgument(format!(
                "missing input `{}` (the model reads: {})",
                spec.name,
                names(inputs)
            ))
        })?;
        let list = v.as_array().ok_or_else(|| {
            ServeError::InvalidArgument(format!(
                "input `{}` is {}; expected a list of values, one per instance",
                spec.name,
                kind_name(v)
            ))
        })?;
        match rows {
            Some((n, other)) if n != list.len() => {
                return Err(ServeError::InvalidArgument(format!(
                    "input `{}` has {} values but `{other}` has {n}; every input needs one \
                     value per instance",
                    spec.name,
                    list.len()
                )));
            }
            _ => rows = Some((list.len(), &spec.name)),
        }
        columns.push(column(spec, &list.iter().collect::<Vec<_>>())?);
    }
    build(inputs, columns, rows.map_or(0, |r| r.0))
}

fn build(inputs: &[InputSpec], columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    let fields: Vec<Field> = inputs
        .iter()
        .zip(&columns)
        .map(|(s, c)| Field::new(&s.name, c.data_type().clone(), true))
        .collect();
    let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)
        .map_err(|e| ServeError::Internal(format!("building the input batch: {e}")))
}

fn names(inputs: &[InputSpec]) -> String {
    inputs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
        v => Kind::of(v).name(),
    }
}

/// Logits of every row of `batch`, through the trainer's own scoring
/// ([`kiln_trainer::export::score_rows`]: `Transform::prepare` and the forward pass in fixed,
/// padded chunks), so a served logit equals `kiln predict`'s bit for bit whatever the request
/// size. Errors name the feature and the instance (row).
pub fn score(model: &Model, batch: &RecordBatch) -> Result<Vec<f32>> {
    let t = &model.transform;
    let rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
    let mut scratch = Prepared::new(t.categorical.len(), t.dense_width());
    let (mut logits, mut labels) = (Vec::with_capacity(rows.len()), Vec::new());
    kiln_trainer::export::score_rows(
        &model.params,
        t,
        batch,
        &rows,
        &mut scratch,
        &mut logits,
        &mut labels,
    )
    .map_err(|e| match e {
        // What the transform says about an instance's values.
        kiln_trainer::Error::Column { .. }
        | kiln_trainer::Error::Value { .. }
        | kiln_trainer::Error::Data(_) => {
            ServeError::InvalidArgument(format!("{e} (row = instance)"))
        }
        other => ServeError::Internal(format!("scoring: {other}")),
    })?;
    Ok(logits)
}

/// The probability of a logit (the `prediction` column of `kiln predict --output`).
pub fn probability(logit: f32) -> f32 {
    kiln_trainer::model::sigmoid(logit)
}

/// Column kinds of `inputs`, keyed by name (for metadata).
pub fn kinds(inputs: &[InputSpec]) -> BTreeMap<&str, &[InputKind]> {
    inputs
        .iter()
        .map(|s| (s.name.as_str(), s.kinds.as_slice()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;
    use serde_json::json;

    fn specs() -> Vec<InputSpec> {
        vec![
            InputSpec {
                name: "user".into(),
                kinds: vec![InputKind::CategoricalHash],
            },
            InputSpec {
                name: "price".into(),
                kinds: vec![InputKind::Numeric],
            },
        ]
    }

    #[test]
    fn rows_become_typed_columns_and_extra_features_are_ignored() {
        let b = batch_from_rows(
            &specs(),
            &[
                json!({"user": 7, "price": 1.5, "label": 1}),
                json!({"user": null, "price": 2}),
            ],
        )
        .unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.num_columns(), 2);
        assert_eq!(b.column(0).data_type(), &DataType::Int64);
        assert_eq!(b.column(1).data_type(), &DataType::Float64);
        assert_eq!(b.column(0).null_count(), 1);
    }

    #[test]
    fn errors_name_the_feature_and_the_instance() {
        let e = batch_from_rows(
            &specs(),
            &[json!({"user": 1, "price": 1}), json!({"user": 2})],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("instance 1") && e.contains("`price`"), "{e}");
        let e = batch_from_rows(
            &specs(),
            &[
                json!({"user": 1, "price": 1}),
                json!({"user": 2, "price": "x"}),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("instance 1") && e.contains("`price`"), "{e}");
        let e = batch_from_rows(
            &specs(),
            &[
                json!({"user": 1, "price": 1}),
                json!({"user": "a", "price": 1}),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("instance 1") && e.contains("instance 0"), "{e}");
        let e = batch_from_rows(&specs(), &[json!({"user": 1.5, "price": 1})])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`user`"), "{e}");
    }

    #[test]
    fn columns_must_have_equal_lengths() {
        let cols = json!({"user": [1, 2], "price": [1.0]});
        let e = batch_from_columns(&specs(), cols.as_object().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`price`") && e.contains("`user`"), "{e}");
        let cols = json!({"user": ["a", "b"], "price": [1.0, null]});
        let b = batch_from_columns(&specs(), cols.as_object().unwrap()).unwrap();
        assert_eq!(b.column(0).data_type(), &DataType::Utf8);
    }
}
