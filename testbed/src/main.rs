//! `testbed up`: runs the test mail servers for a person (local runs of mailroom)
//! until interrupted, and writes how to reach them into DIR/testbed.env.
//! `testbed kube-api`: runs the Kubernetes API double until interrupted and
//! writes kubeconfigs for kubectl (cluster admin) and for ServiceAccounts.

use std::path::PathBuf;
use std::process::ExitCode;

use testbed::kube::{self, KubeApi, KubeOptions, User};
use testbed::{Options, Ports, Stack};

const USAGE: &str = "usage: testbed up --dir DIR [--base-port N] [--user ADDRESS:PASSWORD]... [--deliver ADDRESS:FILE]...
       testbed kube-api --kubeconfig-out FILE [--listen ADDR] [--crds DIR]... [--rbac FILE] [--state DIR] [--history N] [--service-account NS/NAME=FILE]...";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("testbed: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("up") => up(args),
        Some("kube-api") => kube_api(args),
        _ => Err(USAGE.into()),
    }
}

fn kube_api(mut args: impl Iterator<Item = String>) -> Result<(), String> {
    let mut opts = KubeOptions::default();
    let mut kubeconfig = None;
    let mut accounts = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--listen" => opts.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--kubeconfig-out" => kubeconfig = Some(PathBuf::from(value()?)),
            "--crds" => opts
                .crds
                .extend(kube::read_documents(&PathBuf::from(value()?)).map_err(|e| e.to_string())?),
            "--rbac" => opts
                .rbac
                .extend(kube::read_documents(&PathBuf::from(value()?)).map_err(|e| e.to_string())?),
            "--state" => opts.state_dir = Some(PathBuf::from(value()?)),
            "--history" => {
                opts.history = value()?.parse().map_err(|e| format!("--history: {e}"))?
            }
            "--service-account" => {
                let v = value()?;
                let (account, file) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--service-account {v}: expected NS/NAME=FILE"))?;
                let (ns, name) = account
                    .split_once('/')
                    .ok_or_else(|| format!("--service-account {v}: expected NS/NAME=FILE"))?;
                accounts.push((ns.to_owned(), name.to_owned(), PathBuf::from(file)));
            }
            _ => return Err(format!("unknown argument {arg}; {USAGE}")),
        }
    }
    let kubeconfig = kubeconfig.ok_or_else(|| USAGE.to_owned())?;
    let api = KubeApi::start(opts).map_err(|e| e.to_string())?;
    api.write_kubeconfig(&kubeconfig, api.admin_token(), "default")
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    for (ns, name, file) in &accounts {
        let token = api.add_user(User::service_account(ns, name, &[]));
        api.write_kubeconfig(file, &token, ns)
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    eprintln!(
        "testbed: kube-api ready at {}; kubeconfig {}",
        api.url(),
        kubeconfig.display()
    );
    loop {
        std::thread::park();
    }
}

fn up(mut args: impl Iterator<Item = String>) -> Result<(), String> {
    let mut dir = None;
    let mut base = None;
    let mut users = Vec::new();
    let mut deliveries = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--base-port" => {
                base = Some(
                    value()?
                        .parse::<u16>()
                        .map_err(|e| format!("--base-port: {e}"))?,
                )
            }
            "--user" => {
                let v = value()?;
                let (address, password) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--user {v}: expected ADDRESS:PASSWORD"))?;
                users.push((address.to_owned(), password.to_owned()));
            }
            "--deliver" => {
                let v = value()?;
                let (address, file) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--deliver {v}: expected ADDRESS:FILE"))?;
                deliveries.push((address.to_owned(), PathBuf::from(file)));
            }
            _ => return Err(format!("unknown argument {arg}; {USAGE}")),
        }
    }
    let dir = dir.ok_or_else(|| USAGE.to_owned())?;
    let stack = Stack::start(Options {
        ports: base.map(Ports::from_base),
        dir: Some(dir),
        ..Options::default()
    })
    .map_err(|e| e.to_string())?;
    for (address, password) in &users {
        stack
            .add_user(address, password)
            .map_err(|e| e.to_string())?;
    }
    for (address, file) in &deliveries {
        let raw = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        stack
            .deliver(address, &[raw])
            .map_err(|e| format!("delivering {} to {address}: {e}", file.display()))?;
    }
    let p = stack.ports();
    let env = format!(
        "TESTBED_CA={}\nTESTBED_IMAP={}\nTESTBED_IMAPS={}\nTESTBED_POP3={}\nTESTBED_POP3S={}\nTESTBED_SUBMISSION={}\nTESTBED_SMTPS={}\nTESTBED_CLEARTEXT_HOST={}\n",
        stack.ca_path().display(),
        p.imap,
        p.imaps,
        p.pop3,
        p.pop3s,
        p.submission,
        p.smtps,
        testbed::CLEARTEXT_HOST,
    );
    let env_path = stack.dir().join("testbed.env");
    std::fs::write(&env_path, env).map_err(|e| format!("{}: {e}", env_path.display()))?;
    eprintln!(
        "testbed: mail servers ready in {} ms; IMAPS 127.0.0.1:{}, POP3S {}, submission {}, SMTPS {}; CA {}; users: {}",
        stack.startup_time().as_millis(),
        p.imaps,
        p.pop3s,
        p.submission,
        p.smtps,
        stack.ca_path().display(),
        users
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Runs until killed; the watchdog stops the servers when this process ends.
    loop {
        std::thread::park();
    }
}
