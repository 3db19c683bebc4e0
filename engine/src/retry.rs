//! Transient source and sink failures surfaced as I/O errors, so Ballista retries the task;
//! permanent ones fail the job at once.
//!
//! Ballista retries a task only when its error is a `DataFusionError::IoError`. A Parquet scan
//! that hits a dropped connection or an S3 5xx fails with an object store error wrapped in a
//! Parquet error instead. [`SourceIoExec`] sits on every file scan (inserted by
//! [`crate::write::KilnQueryPlanner`] after physical optimisation, locally and on the
//! scheduler alike) and turns transient failures into I/O errors naming the scan. Permanent
//! failures — a missing object, a denied or unauthenticated request, an invalid path, a schema
//! mismatch, a corrupt file, a value the shard writer cannot encode — are never I/O errors, so
//! they are not retried ([`is_transient`]).

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, Statistics,
};
use futures::StreamExt;

/// Wraps a file scan; object store failures inside it become `IoError`s.
#[derive(Debug)]
pub struct SourceIoExec {
    input: Arc<dyn ExecutionPlan>,
}

impl SourceIoExec {
    /// Wraps `input`.
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        Self { input }
    }
}

/// Wraps every `DataSourceExec` of `plan` in a [`SourceIoExec`].
pub fn wrap_sources(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|p| {
        if p.is::<DataSourceExec>() {
            Ok(Transformed::yes(
                Arc::new(SourceIoExec::new(p)) as Arc<dyn ExecutionPlan>
            ))
        } else {
            Ok(Transformed::no(p))
        }
    })
    .map(|t| t.data)
}

/// A transient failure (possibly inside a Parquet error) as an I/O error naming `what`, so
/// it is retried; a permanent one that is an I/O error becomes an execution error, so it is not.
pub fn retryable(e: DataFusionError, what: &str) -> DataFusionError {
    let transient = is_transient(&e);
    match (transient, matches!(e, DataFusionError::IoError(_))) {
        (true, false) => DataFusionError::IoError(std::io::Error::other(format!("{what}: {e}"))),
        (false, true) => DataFusionError::Execution(format!("{what}: {e} (not retried)")),
        _ => e,
    }
}

/// Whether retrying could help: network and server failures yes; a missing object, a denied
/// request, bad input or a plan error no.
pub fn is_transient(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::ObjectStore(os) => object_store_transient(os),
        DataFusionError::IoError(io) => io_transient(io),
        DataFusionError::ParquetError(p) => match p.as_ref() {
            datafusion::parquet::errors::ParquetError::External(inner) => {
                error_transient(inner.as_ref())
            }
            _ => false,
        },
        DataFusionError::External(inner) => {
            inner
                .downcast_ref::<object_store::Error>()
                .is_some_and(object_store_transient)
                || inner
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(io_transient)
        }
        _ => false,
    }
}

/// An error of unknown type from inside a reader: object store and I/O errors are classified;
/// anything else raised while reading bytes is taken as transient (a timeout, a reset).
fn error_transient(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    if let Some(os) = e.downcast_ref::<object_store::Error>() {
        return object_store_transient(os);
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io_transient(io);
    }
    true
}

/// Object store errors: only generic (network, 5xx, timeouts) ones are transient.
pub fn object_store_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::NotFound { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => false,
        E::Generic { source, .. } => match source.downcast_ref::<std::io::Error>() {
            Some(io) => io_transient(io),
            None => true,
        },
        _ => true,
    }
}

/// I/O errors: a missing file, a denied access or bad data are permanent.
pub fn io_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    if let Some(inner) = e.get_ref()
        && let Some(os) = inner.downcast_ref::<object_store::Error>()
    {
        return object_store_transient(os);
    }
    !matches!(
        e.kind(),
        K::NotFound
            | K::PermissionDenied
            | K::InvalidInput
            | K::InvalidData
            | K::Unsupported
            | K::AlreadyExists
            | K::IsADirectory
            | K::NotADirectory
    )
}

impl DisplayAs for SourceIoExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SourceIoExec")
    }
}

impl ExecutionPlan for SourceIoExec {
    fn name(&self) -> &str {
        "SourceIoExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(Arc::clone(&children[0]))))
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    /// The scan's statistics (join selection keeps seeing through the wrapper).
    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Arc<Statistics>> {
        self.input.partition_statistics(partition)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let what = format!(
            "reading {} (partition {partition})",
            datafusion::physical_plan::displayable(self.input.as_ref()).one_line()
        )
        .trim()
        .to_string();
        let input = self
            .input
            .execute(partition, context)
            .map_err(|e| retryable(e, &what))?;
        let schema = input.schema();
        let stream = input.map(move |r| r.map_err(|e| retryable(e, &what)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_failures_become_io_errors() {
        let store_err = DataFusionError::ObjectStore(Box::new(object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        }));
        let e = retryable(store_err, "reading s3://b/x.parquet");
        assert!(matches!(e, DataFusionError::IoError(_)), "{e:?}");
        assert!(e.to_string().contains("reading s3://b/x.parquet"), "{e}");
        assert!(e.to_string().contains("connection reset"), "{e}");
        let parquet = DataFusionError::ParquetError(Box::new(
            datafusion::parquet::errors::ParquetError::External("timeout".into()),
        ));
        assert!(matches!(
            retryable(parquet, "x"),
            DataFusionError::IoError(_)
        ));
        let schema = DataFusionError::Plan("column x not found".into());
        assert!(matches!(retryable(schema, "x"), DataFusionError::Plan(_)));
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let missing = DataFusionError::ObjectStore(Box::new(object_store::Error::NotFound {
            path: "b/x.parquet".into(),
            source: "404".into(),
        }));
        let e = retryable(missing, "reading s3://b/x.parquet");
        assert!(!matches!(e, DataFusionError::IoError(_)), "{e:?}");
        let denied = DataFusionError::IoError(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "403",
        ));
        let e = retryable(denied, "reading s3://b/x.parquet");
        assert!(matches!(e, DataFusionError::Execution(_)), "{e:?}");
        assert!(e.to_string().contains("not retried"), "{e}");
        let reset = DataFusionError::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(matches!(retryable(reset, "x"), DataFusionError::IoError(_)));
    }
}
