//! `kiln features` (being built).

/// Arguments of `kiln features`.
#[derive(clap::Args)]
pub struct FeaturesArgs {}

pub fn run(_args: FeaturesArgs) -> anyhow::Result<()> {
    anyhow::bail!("kiln features: being built")
}
