//! `kiln predict` (being built).

/// Arguments of `kiln predict`.
#[derive(clap::Args)]
pub struct PredictArgs {}

pub fn run(_args: PredictArgs) -> anyhow::Result<()> {
    anyhow::bail!("kiln predict: being built")
}
