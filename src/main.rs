use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailroom::api;

/// mailroom: mailboxes in, helpdesk tickets out, declared as Kubernetes resources.
#[derive(Parser)]
#[command(name = "mailroom", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the IncomingEmailServer and OutgoingEmailServer CRDs as YAML
    /// (`mailroom crd | kubectl apply -f -`).
    Crd {
        /// Write one file per CRD into this folder instead (`<name>.yaml`), as kept in `crds/`.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd { dir: None } => print_crds(),
        Command::Crd { dir: Some(dir) } => write_crds(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mailroom: {message}");
            ExitCode::FAILURE
        }
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
