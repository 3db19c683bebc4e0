//! `kiln`: turns a day of raw events into a trained, versioned model.

use clap::{Parser, Subcommand};

mod cmd;
mod generator;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kiln: daily feature ETL (DataFusion), sharded training data, multi-worker training.
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
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
    /// Train the spec's model on a committed dataset, on one or several workers.
    Train(cmd::train::TrainArgs),
    /// Apply an exported model (and its saved feature transform) to a dataset.
    Predict(cmd::predict::PredictArgs),
    /// Benchmarks that print figures (`kiln bench features|train|allreduce`).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    cmd::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Gen(c) => cmd::r#gen::run(c),
        Command::Features(a) => cmd::features::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Predict(a) => cmd::predict::run(a),
        Command::Bench(c) => cmd::bench::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
