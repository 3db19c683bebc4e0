//! Source read failures surfaced as I/O errors, so Ballista retries the task.
//!
//! Ballista retries a task only when its error is a `DataFusionError::IoError`. A Parquet scan
//! that hits a dropped connection or an S3 5xx fails with an object store error wrapped in a
//! Parquet error instead. [`SourceIoExec`] sits on every file scan (inserted by
//! [`crate::write::KilnQueryPlanner`] after physical optimisation, locally and on the
//! scheduler alike) and turns those into I/O errors naming the scan; anything else (a schema
//! mismatch, a corrupt file) stays what it is and fails the job at once.

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

/// An object store failure (possibly inside a Parquet error) as an I/O error naming `what`.
pub fn retryable(e: DataFusionError, what: &str) -> DataFusionError {
    let transient = match e.find_root() {
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => true,
        DataFusionError::ParquetError(p) => matches!(
            p.as_ref(),
            datafusion::parquet::errors::ParquetError::External(_)
        ),
        _ => false,
    };
    if transient && !matches!(e, DataFusionError::IoError(_)) {
        DataFusionError::IoError(std::io::Error::other(format!("{what}: {e}")))
    } else {
        e
    }
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
}
