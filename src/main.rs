use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mailroom::api;
use mailroom::api::validation::ManifestValidator;
use mailroom::controller;
use mailroom::controller::leader::ElectionConfig;
use mailroom::controller::run::ControllerOptions;
use mailroom::standalone::{self, RunOptions, check, table};
use mailroom::submission::tls::TlsFiles;
use mailroom::submission::{DEFAULT_BIND, SubmissionTokens};
use mailroom_core::oauth2::{self, authorize};
use secrecy::SecretString;

/// mailroom: mailboxes in, helpdesk tickets out, declared as Kubernetes resources.
#[derive(Parser)]
#[command(name = "mailroom", version, about)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Mailbox sign-ins (TCP, TLS, login) in progress at once; the rest wait
    /// their turn (a start-up, or a server back after an outage).
    #[arg(long, value_name = "N", default_value_t = 64, global = true)]
    max_concurrent_sign_ins: usize,
    /// Sessions one account may have open at once, shared by every resource
    /// that signs in to it (default: Gmail 15, Microsoft 365 20, others none).
    #[arg(long, value_name = "N", global = true)]
    max_sessions_per_account: Option<usize>,
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
        /// Serve /metrics (OpenMetrics) and /healthz here; off without it.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
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
        /// ServiceAccount tokens at the submission endpoint must be issued for
        /// this audience (a projected token with `audience: mailroom`).
        #[arg(long, value_name = "AUDIENCE", default_value = controller::review::DEFAULT_AUDIENCE)]
        token_audience: String,
        /// Serve the submission endpoint over TLS with this certificate chain
        /// (PEM; read again when it changes), with --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve the submission endpoint over plain HTTP on a non-loopback
        /// address (tokens cross the network in clear).
        #[arg(long)]
        allow_plain_http: bool,
        /// Elect a leader with a Lease, so that replicas can stand by.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_election: bool,
        /// Namespace of the leader Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the leader Lease: one per release and shard (the chart uses
        /// its fullname). Default: mailroom-leader, or mailroom-leader-SHARD.
        #[arg(long)]
        lease_name: Option<String>,
        /// Handle only resources labelled mailroom.dev/shard=NAME (default:
        /// only resources without that label).
        #[arg(long, value_name = "NAME")]
        shard: Option<String>,
        /// Seconds a Lease that stopped changing stays held.
        #[arg(long, value_name = "SECONDS", default_value_t = 15)]
        lease_duration: u64,
        /// Seconds without a successful renewal after which the leader aborts
        /// its workers and stands by; shorter than the lease duration.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        renew_deadline: u64,
        /// Seconds between a standby's attempts to take the Lease; the leader
        /// renews every two.
        #[arg(long, value_name = "SECONDS", default_value_t = 1)]
        retry_period: u64,
        /// This replica's name in the Lease.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Seconds after which every resource is reconciled again without a
        /// change (less up to a tenth, spreading them out).
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        resync: u64,
        /// Seconds between status writes that change only counters.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        status_counters_every: u64,
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
    /// OAuth2 sign-in helpers.
    #[command(name = "oauth2", subcommand)]
    OAuth2(OAuth2Command),
    /// Print the IncomingEmailServer and OutgoingEmailServer CRDs as YAML
    /// (`mailroom crd | kubectl apply -f -`).
    Crd {
        /// Write one file per CRD into this folder instead (`<name>.yaml`), as kept in `crds/`.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OAuthProvider {
    Google,
    Microsoft,
    /// Any other provider: give --authorize-url, --token-url and --scope.
    Other,
}

#[derive(Subcommand)]
enum OAuth2Command {
    /// Obtain the first refresh token: open the printed URL in a browser on
    /// this machine and consent; the provider sends the browser back to a
    /// listener on 127.0.0.1. Prints the Secret to apply (standard output).
    Authorize {
        #[arg(long, value_enum)]
        provider: OAuthProvider,
        /// The OAuth client id (a "Desktop app" client at Google, a public
        /// client with redirect URI http://localhost at Microsoft).
        #[arg(long)]
        client_id: String,
        /// The client secret; better given in the environment than on the command line.
        #[arg(long, env = "MAILROOM_OAUTH2_CLIENT_SECRET", hide_env_values = true)]
        client_secret: String,
        /// The mailbox to sign in as.
        #[arg(long, value_name = "EMAIL")]
        login_hint: Option<String>,
        /// Consent endpoint (default: the provider's).
        #[arg(long, value_name = "URL")]
        authorize_url: Option<String>,
        /// Token endpoint (default: the provider's; for a Microsoft tenant of
        /// your own, its tenant URL).
        #[arg(long, value_name = "URL")]
        token_url: Option<String>,
        /// Scopes to request, repeatable (default: the provider's IMAP, POP3 and SMTP scopes).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Name of the printed Secret.
        #[arg(long, default_value = "mailroom-oauth2")]
        secret_name: String,
        /// Namespace of the printed Secret.
        #[arg(long)]
        namespace: Option<String>,
        /// Where to listen for the redirect (port 0: any free port).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// How long to wait for the consent.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mailroom::logging::init(matches!(cli.log_format, LogFormat::Json));
    if let Err(e) = mailroom_core::connection::limits::configure(
        cli.max_concurrent_sign_ins,
        cli.max_sessions_per_account,
    ) {
        eprintln!("mailroom: {e}");
        return ExitCode::FAILURE;
    }
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
            metrics_listen,
            token_file,
        } => tokens(token_file.as_deref()).and_then(|tokens| {
            runtime()?.block_on(async {
                standalone::run(RunOptions {
                    manifests,
                    status: status_dir,
                    tickets: tickets_dir,
                    state: state_dir,
                    listen,
                    metrics_listen,
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
        Command::OAuth2(command) => oauth2(command),
        Command::Controller {
            namespaces,
            default_sink_dir,
            health_listen,
            listen,
            token_file,
            token_audience,
            tls_cert,
            tls_key,
            allow_plain_http,
            leader_election,
            lease_namespace,
            lease_name,
            lease_duration,
            renew_deadline,
            retry_period,
            identity,
            resync,
            status_counters_every,
            shard,
        } => tokens(token_file.as_deref()).and_then(|tokens| {
            let shard_of = controller::shard::Shard::new(shard.clone())?;
            let lease_name = lease_name.unwrap_or_else(|| match &shard {
                Some(s) => format!("mailroom-leader-{s}"),
                None => "mailroom-leader".to_owned(),
            });
            let identity = identity.unwrap_or_else(|| {
                format!("mailroom-{}-{:08x}", std::process::id(), fastrand::u32(..))
            });
            let election = leader_election.then(|| ElectionConfig {
                lease_duration: Duration::from_secs(lease_duration),
                renew_deadline: Duration::from_secs(renew_deadline),
                retry_period: Duration::from_secs(retry_period),
                ..ElectionConfig::new(&lease_namespace, &lease_name, &identity)
            });
            runtime()?.block_on(async {
                controller::run::run(ControllerOptions {
                    namespaces,
                    default_sink: default_sink_dir,
                    health_listen,
                    submission_listen: listen,
                    tokens,
                    token_audience,
                    tls: tls_cert
                        .zip(tls_key)
                        .map(|(cert, key)| TlsFiles { cert, key }),
                    allow_plain_http,
                    election,
                    identity,
                    timing: controller::Timing {
                        resync: Duration::from_secs(resync),
                        stats_every: Duration::from_secs(status_counters_every),
                    },
                    shard: shard_of,
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

/// Submission tokens from `--token-file`, else from MAILROOM_SUBMISSION_TOKENS.
fn tokens(file: Option<&Path>) -> Result<Option<SubmissionTokens>, String> {
    if let Some(file) = file {
        return SubmissionTokens::from_file(file)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    match std::env::var("MAILROOM_SUBMISSION_TOKENS") {
        Ok(text) => SubmissionTokens::parse(&text)
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

fn oauth2(command: OAuth2Command) -> Result<(), String> {
    let OAuth2Command::Authorize {
        provider,
        client_id,
        client_secret,
        login_hint,
        authorize_url,
        token_url,
        scopes,
        secret_name,
        namespace,
        listen,
        timeout,
    } = command;
    let preset = match provider {
        OAuthProvider::Google => Some(oauth2::preset::GOOGLE),
        OAuthProvider::Microsoft => Some(oauth2::preset::MICROSOFT),
        OAuthProvider::Other => None,
    };
    let required = |given: Option<String>, default: Option<&str>, flag: &str| {
        given
            .or(default.map(str::to_owned))
            .ok_or_else(|| format!("{flag} is required with --provider other"))
    };
    let client_secret = SecretString::from(client_secret);
    let request = authorize::Request {
        authorize_url: required(
            authorize_url,
            preset.map(|p| p.authorize_url),
            "--authorize-url",
        )?,
        token_url: required(token_url, preset.map(|p| p.token_url), "--token-url")?,
        client_id: client_id.clone(),
        client_secret: client_secret.clone(),
        scopes: if scopes.is_empty() {
            preset
                .map(|p| p.scopes.iter().map(|s| (*s).to_owned()).collect())
                .unwrap_or_default()
        } else {
            scopes
        },
        login_hint,
        listen,
        redirect_host: match provider {
            OAuthProvider::Microsoft => "localhost",
            OAuthProvider::Google | OAuthProvider::Other => "127.0.0.1",
        },
        timeout: Duration::from_secs(timeout),
    };
    let refresh_token = runtime()?
        .block_on(authorize::authorize(&request, |url| {
            eprintln!("Open this URL in a browser on this machine and consent:\n\n{url}\n");
            eprintln!("Waiting up to {timeout} s for the provider to send the browser back…");
        }))
        .map_err(|e| e.to_string())?;
    eprintln!(
        "Consent received. Apply the Secret below (kubectl apply -f -, or save it into the manifests folder) and point auth.oauth2.secretRef at it."
    );
    print!(
        "{}",
        authorize::secret_yaml(
            &secret_name,
            namespace.as_deref(),
            &client_id,
            &client_secret,
            &refresh_token
        )
    );
    Ok(())
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
