//! One module per `kiln` subcommand: argument struct + `run`.

pub mod bench;
pub mod features;
pub mod gen;
pub mod inspect;
pub mod predict;
pub mod train;

/// Logs go to stderr (`RUST_LOG` to tune; default `info`), so stdout stays machine-readable.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
