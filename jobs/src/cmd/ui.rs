//! `kiln ui`: the read-only web view of jobs' runs and models (`kiln_ui`; docs/observability.md).

use std::path::PathBuf;

use kiln_ui::{Job, UiConfig};

/// Arguments of `kiln ui`.
#[derive(clap::Args, Debug, Clone)]
pub struct UiArgs {
    /// Job specs: each one's name, metadata store and model repository.
    #[arg(required = true, value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// Address to listen on (port 0: a free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    /// Run dates the grid shows (a page's `?days=N` overrides it).
    #[arg(long, default_value_t = 14)]
    pub days: usize,
}

/// Runs `kiln ui` until SIGTERM or Ctrl-C.
pub fn run(args: UiArgs) -> anyhow::Result<()> {
    let jobs = args
        .specs
        .iter()
        .map(|s| Job::from_spec(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = UiConfig {
        bind: args.bind,
        jobs,
        days: args.days,
    };
    super::runtime()?.block_on(async move {
        let running = kiln_ui::start(config, kiln_serving::http::termination()).await?;
        println!(
            "{}",
            serde_json::json!({ "listening": running.addr.to_string() })
        );
        running.wait().await
    })
}
