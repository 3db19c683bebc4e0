//! Kiln's extension codecs: how Kiln's plan nodes travel between a Ballista client, the
//! scheduler and executors.
//!
//! - [`KilnLogicalCodec`]: the [`ShardWriteNode`] and Kafka tables (client -> scheduler) and
//!   the `kiln_shard` UDF; everything else goes to Ballista's own logical codec.
//! - [`KilnPhysicalCodec`]: [`ShardSinkExec`], [`SourceIoExec`], Kafka scans (scheduler ->
//!   executors) and `kiln_shard`;
//!   everything else (shuffle readers/writers, ...) goes to Ballista's physical codec.
//!
//! A Kiln node is encoded as `KILN` + a one-byte tag + the JSON of its spec
//! ([`crate::sink::SinkSpec`], [`crate::kafka::KafkaScanSpec`]): URLs, offsets,
//! a run id and shard options. No credentials: each process resolves object stores from its
//! own environment.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};

use crate::kafka::{KafkaScanExec, KafkaScanSpec, KafkaTable};
use crate::retry::SourceIoExec;
use crate::sink::{KilnShardUdf, ShardSinkExec};
use crate::text::BadRowLedger;
use crate::write::ShardWriteNode;

const MAGIC: &[u8] = b"KILN";
const TAG_SHARD_WRITE: u8 = b'W';
const TAG_SHARD_SINK: u8 = b'S';
const TAG_SOURCE_IO: u8 = b'R';
const TAG_KAFKA_TABLE: u8 = b'K';
const TAG_KAFKA_SCAN: u8 = b'X';
const KILN_SHARD: &str = "kiln_shard";

fn encode_spec<T: serde::Serialize>(tag: u8, spec: &T, buf: &mut Vec<u8>) -> DfResult<()> {
    buf.extend_from_slice(MAGIC);
    buf.push(tag);
    serde_json::to_writer(buf, spec)
        .map_err(|e| DataFusionError::Internal(format!("encoding a Kiln plan node: {e}")))
}

/// A Kafka scan as it travels: what to read and which columns to keep.
#[derive(serde::Serialize, serde::Deserialize)]
struct KafkaScanNode {
    spec: KafkaScanSpec,
    projection: Option<Vec<usize>>,
}

/// A ledger for a Kafka table decoded in another process: bad records fail the task there
/// (a cluster run refuses `reject` with Kafka sources before planning).
fn remote_ledger(spec: &KafkaScanSpec) -> Arc<BadRowLedger> {
    Arc::new(BadRowLedger::new(spec.on_bad_rows))
}

/// `Some(spec)` when `buf` is a Kiln node with `tag`.
fn decode_spec<T: serde::de::DeserializeOwned>(tag: u8, buf: &[u8]) -> DfResult<Option<T>> {
    match buf.strip_prefix(MAGIC) {
        Some([t, json @ ..]) if *t == tag => serde_json::from_slice(json)
            .map(Some)
            .map_err(|e| DataFusionError::Internal(format!("decoding a Kiln plan node: {e}"))),
        _ => Ok(None),
    }
}

fn is_kiln_shard(name: &str) -> bool {
    name == KILN_SHARD
}

/// Logical codec: [`ShardWriteNode`] and `kiln_shard`, then Ballista's codec.
#[derive(Debug, Default)]
pub struct KilnLogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for KilnLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        match decode_spec(TAG_SHARD_WRITE, buf)? {
            Some(spec) => {
                let input = inputs.first().cloned().ok_or_else(|| {
                    DataFusionError::Internal("ShardWrite arrived without its input".into())
                })?;
                Ok(Extension {
                    node: Arc::new(ShardWriteNode::try_new(input, spec)?),
                })
            }
            None => self.inner.try_decode(buf, inputs, ctx),
        }
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        match node.node.as_any().downcast_ref::<ShardWriteNode>() {
            Some(write) => encode_spec(TAG_SHARD_WRITE, write.spec(), buf),
            None => self.inner.try_encode(node, buf),
        }
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        if let Some(mut spec) = decode_spec::<KafkaScanSpec>(TAG_KAFKA_TABLE, buf)? {
            // Decoded by a Ballista scheduler: see `KafkaScanSpec::one_partition`.
            spec.one_partition = true;
            let ledger = remote_ledger(&spec);
            return Ok(Arc::new(KafkaTable::try_new(spec, ledger)?));
        }
        self.inner
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        if let Some(kafka) = node.downcast_ref::<KafkaTable>() {
            return encode_spec(TAG_KAFKA_TABLE, kafka.spec(), buf);
        }
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> DfResult<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        if is_kiln_shard(name) {
            return Ok(Arc::new(KilnShardUdf::udf()));
        }
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        if is_kiln_shard(node.name()) {
            buf.extend_from_slice(KILN_SHARD.as_bytes());
            return Ok(());
        }
        self.inner.try_encode_udf(node, buf)
    }
}

/// Physical codec: [`ShardSinkExec`] and `kiln_shard`, then Ballista's codec.
#[derive(Debug, Default)]
pub struct KilnPhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for KilnPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if let Some(node) = decode_spec::<KafkaScanNode>(TAG_KAFKA_SCAN, buf)? {
            let ledger = remote_ledger(&node.spec);
            return Ok(Arc::new(KafkaScanExec::try_new(
                node.spec,
                node.projection,
                ledger,
            )?));
        }
        if buf.strip_prefix(MAGIC) == Some(&[TAG_SOURCE_IO][..]) {
            let input = inputs.first().cloned().ok_or_else(|| {
                DataFusionError::Internal("SourceIoExec arrived without its input".into())
            })?;
            return Ok(Arc::new(SourceIoExec::new(input)));
        }
        match decode_spec(TAG_SHARD_SINK, buf)? {
            Some(spec) => {
                let input = inputs.first().cloned().ok_or_else(|| {
                    DataFusionError::Internal("ShardSinkExec arrived without its input".into())
                })?;
                Ok(Arc::new(ShardSinkExec::new(input, spec)?))
            }
            None => self.inner.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if node.is::<SourceIoExec>() {
            buf.extend_from_slice(MAGIC);
            buf.push(TAG_SOURCE_IO);
            return Ok(());
        }
        if let Some(scan) = node.downcast_ref::<KafkaScanExec>() {
            let node = KafkaScanNode {
                spec: scan.spec().clone(),
                projection: scan.projection().cloned(),
            };
            return encode_spec(TAG_KAFKA_SCAN, &node, buf);
        }
        match node.downcast_ref::<ShardSinkExec>() {
            Some(sink) => encode_spec(TAG_SHARD_SINK, sink.spec(), buf),
            None => self.inner.try_encode(node, buf, proto_converter),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        if is_kiln_shard(name) {
            return Ok(Arc::new(KilnShardUdf::udf()));
        }
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        if is_kiln_shard(node.name()) {
            buf.extend_from_slice(KILN_SHARD.as_bytes());
            return Ok(());
        }
        self.inner.try_encode_udf(node, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkSpec;
    use kiln_connectors::ShardFormat;

    fn spec() -> SinkSpec {
        SinkSpec {
            statement: "examples".into(),
            location: "s3://bucket/out/dt=2026-11-20/".into(),
            run_id: "r1".into(),
            key: "event_id".into(),
            shards: 16,
            formats: vec![ShardFormat::TfRecord, ShardFormat::Parquet],
            tfrecord_compression: kiln_connectors::Compression::Gzip,
            tfrecord_compression_level: 1,
            parquet_compression: crate::spec::ParquetCodec::Zstd,
            statistics: true,
        }
    }

    #[test]
    fn sink_spec_round_trips_and_carries_no_secrets() {
        let mut buf = Vec::new();
        encode_spec(TAG_SHARD_SINK, &spec(), &mut buf).unwrap();
        assert_eq!(decode_spec(TAG_SHARD_SINK, &buf).unwrap(), Some(spec()));
        assert_eq!(
            decode_spec::<SinkSpec>(TAG_SHARD_WRITE, &buf).unwrap(),
            None
        );
        assert_eq!(
            decode_spec::<SinkSpec>(TAG_SHARD_SINK, b"\x0a\x02xy").unwrap(),
            None
        );
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        assert!(
            !text.contains("secret") && !text.contains("key_id"),
            "{text}"
        );
    }
}
