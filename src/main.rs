use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mailroom::api;
use mailroom::api::validation::ManifestValidator;
use mailroom::controller;
use mailroom::controller::run::ControllerOptions;
use mailroom::standalone::{self, RunOptions, check, table};
use mailroom::submission::{DEFAULT_BIND, Tokens};

/// mailroom: mailboxes in, helpdesk tickets out, declared as Kubernetes resources.
#[derive(Parser)]
#[command(name = "mailroom", version, about)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run without a cluster: reconcile the IncomingEmailServers and
    /// OutgoingEmailServers (and their Secrets) in a folder of manifests, and
    /// follow its changes.
    Run {
        /// Folder of YAML manifests.
        #[arg(long, value_name = "DIR")]
        manifests: PathBuf,
        /// Status files (default DIR/.status).
        #[arg(long, value_name = "DIR")]
        status_dir: Option<PathBuf>,
        /// Ticket files of the directory sink (default DIR/.tickets).
        #[arg(long, value_name = "DIR")]
        tickets_dir: Option<PathBuf>,
        /// Fetch cursors (default DIR/.state).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Address of the submission endpoint.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
        listen: SocketAddr,
        /// Bearer tokens of the submission endpoint, one per line (`TOKEN` or
        /// `TOKEN ns1,ns2`). Without it (or MAILROOM_SUBMISSION_TOKENS, same
        /// format) the endpoint stays off.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Run in a cluster (in-cluster config or KUBECONFIG): reconcile every
    /// IncomingEmailServer and OutgoingEmailServer and write their status.
    Controller {
        /// Watch only these namespaces, comma-separated (default: all).
        #[arg(
            long = "watch-namespaces",
            visible_alias = "namespace",
            value_name = "NS,…",
            value_delimiter = ','
        )]
        namespaces: Vec<String>,
        /// Ticket folder (e.g. a volume) for resources that name no sink.
        #[arg(long, value_name = "DIR")]
        default_sink_dir: Option<PathBuf>,
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
        health_listen: SocketAddr,
        /// Address of the submission endpoint.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
        listen: SocketAddr,
        /// Bearer tokens of the submission endpoint (as for `run`).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Elect a leader with a Lease, so that replicas can stand by.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_election: bool,
        /// Namespace of the leader Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// This replica's name in the Lease.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
    },
    /// Print the status of a folder run by `mailroom run`, like `kubectl get`.
    Status {
        #[arg(long, value_name = "DIR")]
        manifests: PathBuf,
        /// Status files (default DIR/.status).
        #[arg(long, value_name = "DIR")]
        status_dir: Option<PathBuf>,
    },
    /// Test the connection of every server in FILE (the Test Connection button);
    /// exits 0 only when all pass.
    TestConnection {
        /// Manifests with IncomingEmailServers and OutgoingEmailServers.
        #[arg(short = 'f', long = "file", value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// Further files with the Secrets (and ConfigMaps) they reference.
        #[arg(long = "secret-file", value_name = "FILE")]
        secret_files: Vec<PathBuf>,
    },
    /// Print the IncomingEmailServer and OutgoingEmailServer CRDs as YAML
    /// (`mailroom crd | kubectl apply -f -`).
    Crd {
        /// Write one file per CRD into this folder instead (`<name>.yaml`), as kept in `crds/`.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Crd { dir: None } => print_crds(),
        Command::Crd { dir: Some(dir) } => write_crds(&dir),
        Command::Status {
            manifests,
            status_dir,
        } => print_status(&status_dir.unwrap_or_else(|| manifests.join(".status"))),
        Command::Run {
            manifests,
            status_dir,
            tickets_dir,
            state_dir,
            listen,
            token_file,
        } => tokens(token_file.as_deref()).and_then(|tokens| {
            runtime()?.block_on(async {
                standalone::run(RunOptions {
                    manifests,
                    status: status_dir,
                    tickets: tickets_dir,
                    state: state_dir,
                    listen,
                    tokens,
                })
                .await
                .map_err(|e| e.to_string())
            })
        }),
        Command::TestConnection {
            files,
            secret_files,
        } => return test_connection(files, secret_files),
        Command::Controller {
            namespaces,
            default_sink_dir,
            health_listen,
            listen,
            token_file,
            leader_election,
            lease_namespace,
            identity,
        } => tokens(token_file.as_deref()).and_then(|tokens| {
            let identity = identity.unwrap_or_else(|| {
                format!("mailroom-{}-{:08x}", std::process::id(), fastrand::u32(..))
            });
            runtime()?.block_on(async {
                controller::run::run(ControllerOptions {
                    namespaces,
                    default_sink: default_sink_dir,
                    health_listen,
                    submission_listen: listen,
                    tokens,
                    leader_election,
                    lease_namespace,
                    identity,
                })
                .await
                .map_err(|e| e.to_string())
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mailroom: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Tokens from `--token-file`, else from MAILROOM_SUBMISSION_TOKENS.
fn tokens(file: Option<&Path>) -> Result<Option<Tokens>, String> {
    if let Some(file) = file {
        return Tokens::from_file(file).map(Some).map_err(|e| e.to_string());
    }
    match std::env::var("MAILROOM_SUBMISSION_TOKENS") {
        Ok(text) => Tokens::parse(&text)
            .map(Some)
            .map_err(|e| format!("MAILROOM_SUBMISSION_TOKENS: {e}")),
        Err(_) => Ok(None),
    }
}

fn print_status(dir: &Path) -> Result<(), String> {
    let rows = table::rows(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if rows.is_empty() {
        println!("no resources (is `mailroom run` running on this folder?)");
    } else {
        print!("{}", table::render(&rows));
    }
    let problems = dir.join("problems.yaml");
    if let Ok(text) = std::fs::read_to_string(&problems) {
        println!("\ninvalid manifests, not applied:\n{text}");
    }
    Ok(())
}

fn test_connection(files: Vec<PathBuf>, secret_files: Vec<PathBuf>) -> ExitCode {
    let validator = match ManifestValidator::new() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("mailroom: {e}");
            return ExitCode::FAILURE;
        }
    };
    let all: Vec<PathBuf> = files.into_iter().chain(secret_files).collect();
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailroom: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (snapshot, results) = runtime.block_on(check::check(&all, &validator));
    let mut ok = snapshot.problems.is_empty() && !results.is_empty();
    for p in &snapshot.problems {
        println!("✗ {p}");
    }
    if results.is_empty() {
        println!("no IncomingEmailServer or OutgoingEmailServer found");
    }
    for r in &results {
        print!("{}", check::render(r));
        ok &= r.passed();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_crds() -> Result<(), String> {
    let yaml = api::crds_yaml().map_err(|e| format!("cannot render the CRDs as YAML: {e}"))?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .map_err(|e| format!("cannot write the CRDs to standard output: {e}"))
}

fn write_crds(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for crd in api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = api::crd_yaml(&crd).map_err(|e| format!("cannot render CRD {name}: {e}"))?;
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
