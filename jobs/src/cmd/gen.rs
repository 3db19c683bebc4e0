//! `kiln gen` (being built).

#[derive(clap::Subcommand)]
pub enum GenCommand {}

pub fn run(c: GenCommand) -> anyhow::Result<()> {
    match c {}
}
