//! `kiln inspect`: print records of a TFRecord/Parquet file or a committed dataset.

/// Arguments of `kiln inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// A `.tfrecord[.gz|.zz]` or `.parquet` file, or a dataset directory (with `_manifest.json`);
    /// a path or a file:// / s3:// / hdfs:// URL.
    pub path: String,
    /// How many records (rows) to print.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Skip corrupt TFRecord records (bad CRC, truncated) instead of failing; the skipped
    /// records are listed in a last line `{"skipped": [...]}`.
    #[arg(long)]
    pub skip_corrupt: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    kiln_connectors::inspect::inspect_with(&args.path, args.limit, args.skip_corrupt, &mut out)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}
