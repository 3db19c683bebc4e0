//! `kiln train` (being built).

/// Arguments of `kiln train`.
#[derive(clap::Args)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("kiln train: being built")
}
