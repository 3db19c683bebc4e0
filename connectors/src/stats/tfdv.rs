//! TFDV's `tensorflow.metadata.v0.DatasetFeatureStatisticsList` (hand-written prost structs,
//! the subset Kiln fills; field numbers as in `tensorflow_metadata/proto/v0/statistics.proto`
//! and `path.proto`), and the conversion from [`DatasetStats`].
//!
//! Mapping: numeric columns -> `num_stats` (type `INT` for integers, booleans and temporal
//! types, `FLOAT` for floats and decimals) with the standard and quantiles histograms and
//! `median` = the 0.5 quantile; string columns -> `string_stats` (`unique`, `top_values`,
//! `avg_length`, a rank histogram of up to 1000 values); binary columns -> `bytes_stats`; other
//! columns -> `struct_stats`. `common_stats` counts rows: `num_non_missing` = non-null rows,
//! `num_missing` = null rows, `min/max/avg/tot_num_values` = list lengths (1 per row for
//! scalar columns). The histograms' `num_nan` is the NaN count.

use prost::Message;

use super::{Bucket, ColumnKind, ColumnStats, DatasetStats};

/// `DatasetFeatureStatisticsList { repeated DatasetFeatureStatistics datasets = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct DatasetFeatureStatisticsList {
    /// The datasets.
    #[prost(message, repeated, tag = "1")]
    pub datasets: Vec<DatasetFeatureStatistics>,
}

/// `DatasetFeatureStatistics { string name = 1; uint64 num_examples = 2;
/// repeated FeatureNameStatistics features = 3; double weighted_num_examples = 4; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct DatasetFeatureStatistics {
    /// Dataset name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Rows.
    #[prost(uint64, tag = "2")]
    pub num_examples: u64,
    /// Per-feature statistics.
    #[prost(message, repeated, tag = "3")]
    pub features: Vec<FeatureNameStatistics>,
    /// Weighted rows (unused: 0).
    #[prost(double, tag = "4")]
    pub weighted_num_examples: f64,
}

/// `Path { repeated string step = 1; }` (path.proto)
#[derive(Clone, PartialEq, prost::Message)]
pub struct Path {
    /// The steps.
    #[prost(string, repeated, tag = "1")]
    pub step: Vec<String>,
}

/// `FeatureNameStatistics { oneof field_id { string name = 1; Path path = 8; } Type type = 2;
/// oneof stats { NumericStatistics num_stats = 3; StringStatistics string_stats = 4;
/// BytesStatistics bytes_stats = 5; StructStatistics struct_stats = 7; }
/// repeated CustomStatistic custom_stats = 6; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureNameStatistics {
    /// Name or path.
    #[prost(oneof = "feature_name_statistics::FieldId", tags = "1, 8")]
    pub field_id: Option<feature_name_statistics::FieldId>,
    /// `Type` enum: INT = 0, FLOAT = 1, STRING = 2, BYTES = 3, STRUCT = 4.
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    /// The statistics.
    #[prost(oneof = "feature_name_statistics::Stats", tags = "3, 4, 5, 7")]
    pub stats: Option<feature_name_statistics::Stats>,
    /// Custom statistics.
    #[prost(message, repeated, tag = "6")]
    pub custom_stats: Vec<CustomStatistic>,
}

/// The oneofs and the enum of `FeatureNameStatistics`.
pub mod feature_name_statistics {
    /// `FeatureNameStatistics.Type`.
    pub mod r#type {
        /// INT
        pub const INT: i32 = 0;
        /// FLOAT
        pub const FLOAT: i32 = 1;
        /// STRING
        pub const STRING: i32 = 2;
        /// BYTES
        pub const BYTES: i32 = 3;
        /// STRUCT
        pub const STRUCT: i32 = 4;
    }

    /// `oneof field_id`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum FieldId {
        /// `string name = 1`
        #[prost(string, tag = "1")]
        Name(String),
        /// `Path path = 8`
        #[prost(message, tag = "8")]
        Path(super::Path),
    }

    /// `oneof stats`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Stats {
        /// `num_stats = 3`
        #[prost(message, tag = "3")]
        NumStats(super::NumericStatistics),
        /// `string_stats = 4`
        #[prost(message, tag = "4")]
        StringStats(super::StringStatistics),
        /// `bytes_stats = 5`
        #[prost(message, tag = "5")]
        BytesStats(super::BytesStatistics),
        /// `struct_stats = 7`
        #[prost(message, tag = "7")]
        StructStats(super::StructStatistics),
    }
}

/// `CustomStatistic { string name = 1; oneof val { double num = 2; string str = 3;
/// Histogram histogram = 4; RankHistogram rank_histogram = 5; } }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct CustomStatistic {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(oneof = "custom_statistic::Val", tags = "2, 3, 4, 5")]
    pub val: Option<custom_statistic::Val>,
}

/// The `CustomStatistic.val` oneof.
pub mod custom_statistic {
    /// One value kind.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Val {
        /// `double num = 2`
        #[prost(double, tag = "2")]
        Num(f64),
        /// `string str = 3`
        #[prost(string, tag = "3")]
        Str(String),
        /// `Histogram histogram = 4`
        #[prost(message, tag = "4")]
        Histogram(super::Histogram),
        /// `RankHistogram rank_histogram = 5`
        #[prost(message, tag = "5")]
        RankHistogram(super::RankHistogram),
    }
}

/// `CommonStatistics { uint64 num_non_missing = 1; uint64 num_missing = 2;
/// uint64 min_num_values = 3; uint64 max_num_values = 4; float avg_num_values = 5;
/// Histogram num_values_histogram = 6; uint64 tot_num_values = 8; }` (7, 9-11 unused)
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommonStatistics {
    /// Rows with a value.
    #[prost(uint64, tag = "1")]
    pub num_non_missing: u64,
    /// Rows without a value.
    #[prost(uint64, tag = "2")]
    pub num_missing: u64,
    /// Fewest values in a row.
    #[prost(uint64, tag = "3")]
    pub min_num_values: u64,
    /// Most values in a row.
    #[prost(uint64, tag = "4")]
    pub max_num_values: u64,
    /// Mean values per non-missing row.
    #[prost(float, tag = "5")]
    pub avg_num_values: f32,
    /// Quantiles of the number of values (not filled).
    #[prost(message, optional, tag = "6")]
    pub num_values_histogram: Option<Histogram>,
    /// All values.
    #[prost(uint64, tag = "8")]
    pub tot_num_values: u64,
}

/// `NumericStatistics { CommonStatistics common_stats = 1; double mean = 2; double std_dev = 3;
/// uint64 num_zeros = 4; double min = 5; double median = 6; double max = 7;
/// repeated Histogram histograms = 8; }` (9 unused)
#[derive(Clone, PartialEq, prost::Message)]
pub struct NumericStatistics {
    /// Common statistics.
    #[prost(message, optional, tag = "1")]
    pub common_stats: Option<CommonStatistics>,
    /// Mean.
    #[prost(double, tag = "2")]
    pub mean: f64,
    /// Standard deviation.
    #[prost(double, tag = "3")]
    pub std_dev: f64,
    /// Zeros.
    #[prost(uint64, tag = "4")]
    pub num_zeros: u64,
    /// Minimum.
    #[prost(double, tag = "5")]
    pub min: f64,
    /// Median.
    #[prost(double, tag = "6")]
    pub median: f64,
    /// Maximum.
    #[prost(double, tag = "7")]
    pub max: f64,
    /// Standard then quantiles histogram.
    #[prost(message, repeated, tag = "8")]
    pub histograms: Vec<Histogram>,
}

/// `StringStatistics.FreqAndValue { string value = 2; double frequency = 3; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct FreqAndValue {
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
    /// Count.
    #[prost(double, tag = "3")]
    pub frequency: f64,
}

/// `StringStatistics { CommonStatistics common_stats = 1; uint64 unique = 2;
/// repeated FreqAndValue top_values = 3; float avg_length = 4; RankHistogram rank_histogram = 5; }`
/// (6, 7 unused)
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStatistics {
    /// Common statistics.
    #[prost(message, optional, tag = "1")]
    pub common_stats: Option<CommonStatistics>,
    /// Distinct values.
    #[prost(uint64, tag = "2")]
    pub unique: u64,
    /// Most frequent values first.
    #[prost(message, repeated, tag = "3")]
    pub top_values: Vec<FreqAndValue>,
    /// Mean length.
    #[prost(float, tag = "4")]
    pub avg_length: f32,
    /// Ranks of the top values.
    #[prost(message, optional, tag = "5")]
    pub rank_histogram: Option<RankHistogram>,
}

/// `BytesStatistics { CommonStatistics common_stats = 1; uint64 unique = 2;
/// float avg_num_bytes = 3; float min_num_bytes = 4; float max_num_bytes = 5; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct BytesStatistics {
    /// Common statistics.
    #[prost(message, optional, tag = "1")]
    pub common_stats: Option<CommonStatistics>,
    /// Distinct values.
    #[prost(uint64, tag = "2")]
    pub unique: u64,
    /// Mean bytes.
    #[prost(float, tag = "3")]
    pub avg_num_bytes: f32,
    /// Fewest bytes.
    #[prost(float, tag = "4")]
    pub min_num_bytes: f32,
    /// Most bytes.
    #[prost(float, tag = "5")]
    pub max_num_bytes: f32,
}

/// `StructStatistics { CommonStatistics common_stats = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct StructStatistics {
    /// Common statistics.
    #[prost(message, optional, tag = "1")]
    pub common_stats: Option<CommonStatistics>,
}

/// `Histogram { uint64 num_nan = 1; uint64 num_undefined = 2; repeated Bucket buckets = 3;
/// HistogramType type = 4; string name = 5; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    /// NaN values.
    #[prost(uint64, tag = "1")]
    pub num_nan: u64,
    /// Undefined values.
    #[prost(uint64, tag = "2")]
    pub num_undefined: u64,
    /// Buckets, lowest first.
    #[prost(message, repeated, tag = "3")]
    pub buckets: Vec<HistogramBucket>,
    /// `HistogramType`: STANDARD = 0, QUANTILES = 1.
    #[prost(int32, tag = "4")]
    pub r#type: i32,
    /// Label.
    #[prost(string, tag = "5")]
    pub name: String,
}

/// `Histogram.HistogramType.STANDARD`
pub const HISTOGRAM_STANDARD: i32 = 0;
/// `Histogram.HistogramType.QUANTILES`
pub const HISTOGRAM_QUANTILES: i32 = 1;

/// `Histogram.Bucket { double low_value = 1; double high_value = 2; double sample_count = 4; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramBucket {
    /// Low, inclusive.
    #[prost(double, tag = "1")]
    pub low_value: f64,
    /// High, exclusive.
    #[prost(double, tag = "2")]
    pub high_value: f64,
    /// Count.
    #[prost(double, tag = "4")]
    pub sample_count: f64,
}

/// `RankHistogram { repeated Bucket buckets = 1; string name = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct RankHistogram {
    /// Buckets, lowest rank first.
    #[prost(message, repeated, tag = "1")]
    pub buckets: Vec<RankHistogramBucket>,
    /// Label.
    #[prost(string, tag = "2")]
    pub name: String,
}

/// `RankHistogram.Bucket { uint64 low_rank = 1; uint64 high_rank = 2; string label = 4;
/// double sample_count = 5; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct RankHistogramBucket {
    /// Low rank, inclusive.
    #[prost(uint64, tag = "1")]
    pub low_rank: u64,
    /// High rank.
    #[prost(uint64, tag = "2")]
    pub high_rank: u64,
    /// The value.
    #[prost(string, tag = "4")]
    pub label: String,
    /// Count.
    #[prost(double, tag = "5")]
    pub sample_count: f64,
}

fn is_float_type(data_type: &str) -> bool {
    let item = data_type
        .trim_start_matches("List(")
        .trim_start_matches("LargeList(")
        .trim_start_matches("FixedSizeList(");
    ["Float", "Decimal"].iter().any(|p| item.contains(p))
}

fn histogram(buckets: &[Bucket], num_nan: u64, kind: i32) -> Histogram {
    Histogram {
        num_nan,
        num_undefined: 0,
        buckets: buckets
            .iter()
            .map(|b| HistogramBucket {
                low_value: b.low,
                high_value: b.high,
                sample_count: b.count,
            })
            .collect(),
        r#type: kind,
        name: String::new(),
    }
}

fn common(c: &ColumnStats) -> CommonStatistics {
    let (min, max, avg, tot) = match &c.list {
        Some(l) => (l.min_length, l.max_length, l.mean_length, l.total_values),
        None => {
            let one = u64::from(c.count > 0);
            (one, one, one as f64, c.count)
        }
    };
    CommonStatistics {
        num_non_missing: c.count,
        num_missing: c.null_count,
        min_num_values: min,
        max_num_values: max,
        avg_num_values: avg as f32,
        num_values_histogram: None,
        tot_num_values: tot,
    }
}

fn feature(c: &ColumnStats) -> FeatureNameStatistics {
    use feature_name_statistics::{Stats, r#type};
    let common_stats = Some(common(c));
    let (ty, stats) = match (c.kind, &c.numeric, &c.string) {
        (ColumnKind::Numeric, Some(n), _) => {
            let ty = if is_float_type(&c.data_type) {
                r#type::FLOAT
            } else {
                r#type::INT
            };
            let median = n.quantiles.get(n.quantiles.len() / 2).copied();
            let num = NumericStatistics {
                common_stats,
                mean: n.mean.unwrap_or(0.0),
                std_dev: n.std_dev.unwrap_or(0.0),
                num_zeros: n.zeros,
                min: n.min.unwrap_or(0.0),
                median: median.unwrap_or(0.0),
                max: n.max.unwrap_or(0.0),
                histograms: vec![
                    histogram(&n.histogram, n.nan_count, HISTOGRAM_STANDARD),
                    histogram(&n.quantiles_histogram, n.nan_count, HISTOGRAM_QUANTILES),
                ],
            };
            (ty, Stats::NumStats(num))
        }
        (ColumnKind::String, _, Some(s)) => {
            let top_values = s
                .top_values
                .iter()
                .map(|v| FreqAndValue {
                    value: v.value.clone(),
                    frequency: v.count as f64,
                })
                .collect();
            let rank_histogram = RankHistogram {
                buckets: s
                    .rank_histogram
                    .iter()
                    .enumerate()
                    .map(|(i, v)| RankHistogramBucket {
                        low_rank: i as u64,
                        high_rank: i as u64,
                        label: v.value.clone(),
                        sample_count: v.count as f64,
                    })
                    .collect(),
                name: String::new(),
            };
            let st = StringStatistics {
                common_stats,
                unique: s.distinct,
                top_values,
                avg_length: s.avg_length as f32,
                rank_histogram: Some(rank_histogram),
            };
            (r#type::STRING, Stats::StringStats(st))
        }
        (ColumnKind::Bytes, _, Some(s)) => {
            let b = BytesStatistics {
                common_stats,
                unique: s.distinct,
                avg_num_bytes: s.avg_length as f32,
                min_num_bytes: s.min_length as f32,
                max_num_bytes: s.max_length as f32,
            };
            (r#type::BYTES, Stats::BytesStats(b))
        }
        _ => (
            r#type::STRUCT,
            Stats::StructStats(StructStatistics { common_stats }),
        ),
    };
    FeatureNameStatistics {
        field_id: Some(feature_name_statistics::FieldId::Name(c.name.clone())),
        r#type: ty,
        stats: Some(stats),
        custom_stats: Vec::new(),
    }
}

/// The `DatasetFeatureStatisticsList` message of `stats` (one dataset named `name`).
pub fn to_message(stats: &DatasetStats, name: &str) -> DatasetFeatureStatisticsList {
    DatasetFeatureStatisticsList {
        datasets: vec![DatasetFeatureStatistics {
            name: name.to_string(),
            num_examples: stats.num_rows,
            features: stats.columns.iter().map(feature).collect(),
            weighted_num_examples: 0.0,
        }],
    }
}

/// The encoded `DatasetFeatureStatisticsList` of `stats`.
pub fn to_proto(stats: &DatasetStats, name: &str) -> Vec<u8> {
    to_message(stats, name).encode_to_vec()
}
