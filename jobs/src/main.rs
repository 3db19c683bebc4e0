//! `kiln`: turns a day of raw events into a trained, versioned model.

use clap::{Parser, Subcommand};

mod cmd;
mod metrics;
mod progress;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kiln: daily feature ETL (DataFusion), sharded training data, multi-worker training.
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    /// No progress bars or progress lines on stderr (results and errors still print).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate deterministic synthetic data (`kiln gen events ...`).
    #[command(subcommand)]
    Gen(cmd::r#gen::GenCommand),
    /// Run a job spec's feature SQL for one date and commit sharded training data.
    Features(cmd::features::FeaturesArgs),
    /// Print records of a TFRecord/Parquet file, or a dataset's manifest and first records.
    Inspect(cmd::inspect::InspectArgs),
    /// A committed dataset's column statistics (computed while it was written) and, with
    /// --baseline, its drift against another dataset.
    Stats(cmd::stats::StatsArgs),
    /// Expectations files for data validation (`kiln schema infer DATASET`).
    #[command(subcommand)]
    Schema(cmd::schema::SchemaCommand),
    /// Train the spec's model on a committed dataset, on one or several workers.
    Train(cmd::train::TrainArgs),
    /// Apply an exported model (and its saved feature transform) to a dataset.
    Predict(cmd::predict::PredictArgs),
    /// Serve the model repository with TF Serving's REST API (hot reload, metrics).
    Serve(cmd::serve::ServeArgs),
    /// Run a Ballista scheduler for `kiln features --cluster` (Kiln's codecs and planner).
    Scheduler(cmd::scheduler::SchedulerArgs),
    /// Run a Ballista executor that runs Kiln's sources and sharded writers.
    Executor(cmd::executor::ExecutorArgs),
    /// Inspect a Kiln Ballista cluster (`kiln cluster status --cluster df://HOST:PORT`).
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCommand),
    /// The daily pipeline for one date: sensors, features, validate, train, evaluate, gate, publish.
    Run(cmd::run::RunArgs),
    /// Records of pipeline runs (`kiln runs list|show`).
    #[command(subcommand)]
    Runs(cmd::runs::RunsCommand),
    /// The model repository, local or on s3:// / hdfs:// (`kiln models list|show|promote|rollback|verify|prune`).
    #[command(subcommand)]
    Models(cmd::models::ModelsCommand),
    /// The daily pipeline for each date of a range, in order, skipping dates already done.
    Backfill(cmd::backfill::BackfillArgs),
    /// Long-running: start the daily run at the spec's cron time ([pipeline.schedule]).
    Schedule(cmd::schedule::ScheduleArgs),
    /// Read-only web view of runs and models: grid, runs, training curves, datasets, models.
    ///
    /// Serves, for each job spec, a view of its run metadata store and model repository (the
    /// spec's [pipeline] metastore and models_dir), read on every request, never written:
    /// the grid of the last run dates x tasks, coloured by outcome, each cell linking to its
    /// attempt's log; a page per run (tasks, attempts, lineage, gate, anomalies), its training
    /// curves (the event files in the model's logs/) and its dataset's statistics and drift;
    /// a page per model (versions, labels, metrics over time). Also /metrics (Prometheus) and
    /// /healthz. Prints {"listening": "HOST:PORT"} on stdout once bound; stops on SIGTERM or
    /// Ctrl-C. See docs/observability.md.
    Ui(cmd::ui::UiArgs),
    /// Benchmarks that print figures (`kiln bench features|train|allreduce`).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Kubernetes manifests for a multi-node training run (`kiln k8s train`).
    #[command(subcommand)]
    K8s(cmd::k8s::K8sCommand),
}

fn main() -> std::process::ExitCode {
    cmd::init_logging();
    let cli = Cli::parse();
    progress::set_quiet(cli.quiet);
    let result = match cli.command {
        Command::Gen(c) => cmd::r#gen::run(c),
        Command::Features(a) => cmd::features::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Schema(c) => cmd::schema::run(c),
        Command::Train(a) => cmd::train::run(a),
        Command::Predict(a) => cmd::predict::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Scheduler(a) => cmd::scheduler::run(a),
        Command::Executor(a) => cmd::executor::run(a),
        Command::Cluster(c) => cmd::cluster::run(c),
        Command::Run(a) => cmd::run::run(a),
        Command::Runs(c) => cmd::runs::run(c),
        Command::Models(c) => cmd::models::run(c),
        Command::Ui(a) => cmd::ui::run(a),
        Command::Backfill(a) => cmd::backfill::run(a),
        Command::Schedule(a) => cmd::schedule::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::K8s(c) => cmd::k8s::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
