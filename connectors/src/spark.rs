//! Spark Connect: SQL run on a Spark cluster, results streamed back as Arrow.
//!
//! The transport (gRPC channel, `sc://` URL parsing, bearer token, retries of unary calls) is
//! Apache Spark's own Rust client, `apache-spark-connect-core`, with the generated protos of
//! `apache-spark-connect-proto`; neither depends on arrow, and the Arrow IPC stream each
//! `ArrowBatch` carries is decoded here with Kiln's arrow, so the graph holds one arrow.
//!
//! A [`SparkAddress`] is `sc://HOST[:PORT][/;param=value;...]` (Spark Connect's URL syntax:
//! `token`, `user_id`, `use_ssl`, ...). The token is a secret: [`SparkAddress::redacted`] (the
//! form used in every error, log line and manifest) leaves it out, and `Debug` prints only
//! that form. A token is sent only over TLS (`use_ssl=true`) unless the host is loopback.
//!
//! Every call that needs an answer before work can start (connecting, the Spark version,
//! configuration, the files of a query) is bounded by the session's timeout, so a server that
//! is down is an error naming the URL within that time, never a hang. A query's result stream
//! is not: a long query is normal. Results are pulled batch by batch (gRPC flow control), so
//! a consumer that reads slowly holds at most a few batches in memory.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use futures::Stream;
use spark_connect_core::{ChannelBuilder, SparkConnectClient};
use spark_connect_proto as pb;

/// How long a call that must answer before work starts may take, unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the Spark Connect client. Each names the URL (without its token).
#[derive(Debug, thiserror::Error)]
pub enum SparkConnectError {
    /// The URL is not a valid Spark Connect URL.
    #[error("invalid Spark Connect URL '{url}': {message}")]
    BadUrl {
        /// The URL, without its token.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The server answered with an error (Spark's own message), or the call failed.
    #[error("Spark Connect {url}: {context}: {message}")]
    Server {
        /// The URL, without its token.
        url: String,
        /// What Kiln asked for.
        context: String,
        /// Spark's message.
        message: String,
    },
    /// No answer within the timeout.
    #[error(
        "Spark Connect {url}: {context}: no answer within {seconds} s (is the Spark Connect server running and reachable?)"
    )]
    Timeout {
        /// The URL, without its token.
        url: String,
        /// What Kiln asked for.
        context: String,
        /// The timeout.
        seconds: f64,
    },
    /// An `ArrowBatch` did not decode as an Arrow IPC stream.
    #[error("Spark Connect {url}: {context}: Arrow IPC: {source}")]
    Arrow {
        /// The URL, without its token.
        url: String,
        /// What Kiln asked for.
        context: String,
        /// The decoder's error.
        #[source]
        source: ArrowError,
    },
}

/// Result alias of this module.
pub type Result<T, E = SparkConnectError> = std::result::Result<T, E>;

/// A parsed `sc://` URL.
#[derive(Clone)]
pub struct SparkAddress {
    builder: ChannelBuilder,
    redacted: String,
}

impl std::fmt::Debug for SparkAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SparkAddress").field(&self.redacted).finish()
    }
}

impl std::fmt::Display for SparkAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl SparkAddress {
    /// Parses `sc://HOST[:PORT][/;param=value;...]` as Spark Connect clients do (port 15002
    /// when absent).
    pub fn parse(url: &str) -> Result<Self> {
        let redacted = redact(url);
        let builder = ChannelBuilder::parse(url).map_err(|e| SparkConnectError::BadUrl {
            url: redacted.clone(),
            message: e.to_string(),
        })?;
        Ok(SparkAddress { builder, redacted })
    }

    /// The URL without its `token` parameter: the form for logs, errors and manifests.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `HOST:PORT` of the server.
    pub fn endpoint(&self) -> String {
        self.builder.endpoint()
    }
}

/// `url` without any `token=...` parameter (parameters follow the first `;`).
fn redact(url: &str) -> String {
    match url.split_once(';') {
        None => url.to_string(),
        Some((head, params)) => {
            let kept: Vec<&str> = params
                .split(';')
                .filter(|p| {
                    let key = p.split('=').next().unwrap_or_default().trim();
                    !key.eq_ignore_ascii_case("token") && !p.is_empty()
                })
                .collect();
            if kept.is_empty() {
                head.trim_end_matches('/').to_string()
            } else {
                format!("{head};{}", kept.join(";"))
            }
        }
    }
}

/// A stream of a query's result batches.
pub type SparkBatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>;

/// One Spark Connect session: SQL in, Arrow out.
pub struct SparkSession {
    client: SparkConnectClient,
    address: SparkAddress,
    timeout: Duration,
    version: String,
}

impl SparkSession {
    /// Opens a session and checks that the server answers (it asks for Spark's version)
    /// within `timeout`.
    pub async fn connect(address: &SparkAddress, timeout: Duration) -> Result<Self> {
        let client = SparkConnectClient::connect(&address.builder)
            .await
            .map_err(|e| SparkConnectError::Server {
                url: address.redacted.clone(),
                context: "connecting".into(),
                message: e.to_string(),
            })?;
        let mut session = SparkSession {
            client,
            address: address.clone(),
            timeout,
            version: String::new(),
        };
        let request = session.analyze_request(pb::analyze_plan_request::Analyze::SparkVersion(
            pb::analyze_plan_request::SparkVersion {},
        ));
        let response = session
            .bounded(
                "asking for the Spark version",
                session.client.analyze_plan(request),
            )
            .await?;
        session.version = match response.result {
            Some(pb::analyze_plan_response::Result::SparkVersion(v)) => v.version,
            _ => String::new(),
        };
        Ok(session)
    }

    /// The server's Spark version, e.g. `4.3.0`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The server's address.
    pub fn address(&self) -> &SparkAddress {
        &self.address
    }

    /// Sets a session configuration value (`spark.sql.session.timeZone`, ...).
    pub async fn set_conf(&self, key: &str, value: &str) -> Result<()> {
        self.bounded(
            &format!("setting {key}"),
            self.client.set_config(key, value),
        )
        .await
    }

    /// Runs `sql` (a query or a command such as `CREATE TEMPORARY VIEW`) and discards any
    /// result rows.
    pub async fn execute(&self, sql: &str) -> Result<()> {
        use futures::TryStreamExt;
        let mut stream = self.query(sql).await?;
        while stream.try_next().await?.is_some() {}
        Ok(())
    }

    /// Runs `sql` and collects its result.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        use futures::TryStreamExt;
        self.query(sql).await?.try_collect().await
    }

    /// The Arrow schema of `sql`'s result, from an empty run of it (`LIMIT 0`): Spark sends
    /// the schema in an empty batch.
    pub async fn schema_of(&self, sql: &str) -> Result<SchemaRef> {
        let probe = format!("SELECT * FROM ({sql}\n) AS __kiln_schema LIMIT 0");
        let batches = self.collect(&probe).await?;
        batches
            .first()
            .map(RecordBatch::schema)
            .ok_or_else(|| self.server_error("reading the result schema", "no Arrow batch"))
    }

    /// The files Spark would read for `sql` (`Dataset.inputFiles`), as Spark names them.
    pub async fn input_files(&self, sql: &str) -> Result<Vec<String>> {
        let request = self.analyze_request(pb::analyze_plan_request::Analyze::InputFiles(
            pb::analyze_plan_request::InputFiles {
                plan: Some(sql_plan(sql)),
            },
        ));
        let response = self
            .bounded("listing the input files", self.client.analyze_plan(request))
            .await?;
        match response.result {
            Some(pb::analyze_plan_response::Result::InputFiles(f)) => {
                let mut files = f.files;
                files.sort();
                Ok(files)
            }
            _ => Err(self.server_error("listing the input files", "no InputFiles in the answer")),
        }
    }

    /// Runs `sql` on the server and streams its result batches as they arrive.
    pub async fn query(&self, sql: &str) -> Result<SparkBatchStream> {
        let request = pb::ExecutePlanRequest {
            session_id: self.client.session_id().to_string(),
            user_context: Some(self.user_context()),
            plan: Some(sql_plan(sql)),
            client_type: Some(client_type()),
            ..Default::default()
        };
        let context = format!("running `{}`", one_line(sql));
        let responses = self
            .bounded(&context, self.client.execute_plan(request))
            .await?;
        let url = self.address.redacted.clone();
        let state = (responses, VecDeque::<RecordBatch>::new(), url, context);
        let stream =
            futures::stream::try_unfold(
                state,
                |(mut responses, mut pending, url, context)| async move {
                    loop {
                        if let Some(batch) = pending.pop_front() {
                            return Ok(Some((batch, (responses, pending, url, context))));
                        }
                        let next = responses.message().await.map_err(|status| {
                            SparkConnectError::Server {
                                url: url.clone(),
                                context: context.clone(),
                                message: spark_connect_core::SparkError::from_grpc_status(status)
                                    .to_string(),
                            }
                        })?;
                        let Some(response) = next else {
                            return Ok(None);
                        };
                        match response.response_type {
                            Some(pb::execute_plan_response::ResponseType::ArrowBatch(batch)) => {
                                pending.extend(decode_ipc(&batch.data).map_err(|source| {
                                    SparkConnectError::Arrow {
                                        url: url.clone(),
                                        context: context.clone(),
                                        source,
                                    }
                                })?);
                            }
                            Some(pb::execute_plan_response::ResponseType::ResultComplete(_)) => {
                                return Ok(None);
                            }
                            _ => {}
                        }
                    }
                },
            );
        Ok(Box::pin(stream))
    }

    fn user_context(&self) -> pb::UserContext {
        pb::UserContext {
            user_id: self.client.user_id().unwrap_or_default().to_string(),
            ..Default::default()
        }
    }

    fn analyze_request(
        &self,
        analyze: pb::analyze_plan_request::Analyze,
    ) -> pb::AnalyzePlanRequest {
        pb::AnalyzePlanRequest {
            session_id: self.client.session_id().to_string(),
            user_context: Some(self.user_context()),
            client_type: Some(client_type()),
            analyze: Some(analyze),
            ..Default::default()
        }
    }

    fn server_error(&self, context: &str, message: impl Into<String>) -> SparkConnectError {
        SparkConnectError::Server {
            url: self.address.redacted.clone(),
            context: context.into(),
            message: message.into(),
        }
    }

    /// `call` bounded by the session's timeout, its error naming the URL and `context`.
    async fn bounded<T>(
        &self,
        context: &str,
        call: impl std::future::Future<Output = spark_connect_core::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.server_error(context, e.to_string())),
            Err(_) => Err(SparkConnectError::Timeout {
                url: self.address.redacted.clone(),
                context: context.into(),
                seconds: self.timeout.as_secs_f64(),
            }),
        }
    }
}

fn client_type() -> String {
    format!("kiln/{}", env!("CARGO_PKG_VERSION"))
}

/// A plan whose root is the SQL text.
fn sql_plan(sql: &str) -> pb::Plan {
    pb::Plan {
        op_type: Some(pb::plan::OpType::Root(pb::Relation {
            common: None,
            rel_type: Some(pb::relation::RelType::Sql(pb::Sql {
                query: sql.to_string(),
                ..Default::default()
            })),
        })),
    }
}

/// Every batch of one Arrow IPC stream.
fn decode_ipc(data: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    StreamReader::try_new(std::io::Cursor::new(data), None)?.collect()
}

/// The first line of `sql`, shortened, for error messages.
fn one_line(sql: &str) -> String {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None => flat,
    }
}

/// Spark's name of a file (`file:/x`, `s3a://b/k`, `hdfs://nn:8020/p`) as a URL Kiln's stores
/// resolve (`file:///x`, `s3://b/k`, `hdfs://nn:8020/p`).
pub fn file_url_from_spark(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("file:") {
        format!("file:///{}", rest.trim_start_matches('/'))
    } else if let Some(rest) = name.strip_prefix("s3a://") {
        format!("s3://{rest}")
    } else if let Some(rest) = name.strip_prefix("/") {
        format!("file:///{rest}")
    } else {
        name.to_string()
    }
}

/// Kiln's URL of a file or directory as Spark names it (`s3://` becomes `s3a://`, Hadoop's
/// S3 filesystem; `file://` and `hdfs://` stay).
pub fn spark_path_from_url(url: &str) -> String {
    match url.strip_prefix("s3://") {
        Some(rest) => format!("s3a://{rest}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_leave_the_address() {
        let a = SparkAddress::parse(
            "sc://spark.example.com:443/;use_ssl=true;token=SECRET;user_id=ana",
        )
        .unwrap();
        assert_eq!(
            a.redacted(),
            "sc://spark.example.com:443/;use_ssl=true;user_id=ana"
        );
        assert!(!format!("{a:?} {a}").contains("SECRET"));
        assert_eq!(a.endpoint(), "spark.example.com:443");
        let b = SparkAddress::parse("sc://h:1/;token=SECRET").unwrap();
        assert_eq!(b.redacted(), "sc://h:1");
        let e = SparkAddress::parse("sc://h:1/path;token=SECRET")
            .unwrap_err()
            .to_string();
        assert!(e.contains("path") && !e.contains("SECRET"), "{e}");
        let e = SparkAddress::parse("http://h:1").unwrap_err().to_string();
        assert!(e.contains("sc://"), "{e}");
    }

    #[test]
    fn file_names_map_between_spark_and_kiln() {
        assert_eq!(
            file_url_from_spark("file:/tmp/t/dt=1/p.parquet"),
            "file:///tmp/t/dt=1/p.parquet"
        );
        assert_eq!(file_url_from_spark("file:///tmp/x"), "file:///tmp/x");
        assert_eq!(
            file_url_from_spark("s3a://b/k/p.parquet"),
            "s3://b/k/p.parquet"
        );
        assert_eq!(file_url_from_spark("hdfs://nn:8020/p"), "hdfs://nn:8020/p");
        assert_eq!(spark_path_from_url("s3://b/k"), "s3a://b/k");
        assert_eq!(spark_path_from_url("file:///tmp/x"), "file:///tmp/x");
    }

    #[tokio::test]
    async fn a_server_that_is_down_is_an_error_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = SparkAddress::parse(&format!("sc://127.0.0.1:{port}/;token=SECRET")).unwrap();
        let started = std::time::Instant::now();
        let e = SparkSession::connect(&a, Duration::from_millis(1500))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(e.contains(&format!("sc://127.0.0.1:{port}")), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
    }
}
