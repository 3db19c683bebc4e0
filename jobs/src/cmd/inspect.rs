//! `kiln inspect` (being built).

/// Arguments of `kiln inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {}

pub fn run(_args: InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("kiln inspect: being built")
}
