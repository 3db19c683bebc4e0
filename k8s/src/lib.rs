//! Kiln on Kubernetes (see `deploy/k8s/README.md`): the manifests of a multi-node training
//! run ([`manifests`]), printed by `kiln k8s train`, and such a run through the Kubernetes
//! API ([`api`]), used by the pipeline's `train` task under `[pipeline] train_on =
//! "kubernetes"`.

pub mod api;
pub mod manifests;

pub use api::{JobState, TrainOutcome, Watch, train};
pub use manifests::{TrainCluster, TrainRun, spec_configmap, to_documents, train_manifests};
