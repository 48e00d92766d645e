//! `--cluster-key-file` on every command, `--insecure` on the servers, and
//! `fastworker keygen` (see `fastworker::auth` and docs/security.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use fastworker::auth::{derived_key_file, new_cluster_key, KeyRing, Role};

use crate::cli::tls::TlsArgs;
use crate::{fail, EXIT_USAGE};

/// The cluster credential every command takes.
#[derive(Args, Clone)]
pub(crate) struct KeyArgs {
    /// Key file sealing every frame (the cluster key on a control plane, a worker key on a subworker,
    /// a client or operator key on client commands); see `fastworker keygen`.
    #[arg(long, env = "FASTWORKER_CLUSTER_KEY_FILE")]
    pub(crate) cluster_key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// The key file's keys, or exit 2 saying what is wrong with it.
    pub(crate) fn load(&self) -> Result<Option<Arc<KeyRing>>, ExitCode> {
        let Some(path) = &self.cluster_key_file else { return Ok(None) };
        KeyRing::load(path).map(|ring| Some(Arc::new(ring))).map_err(|error| fail(EXIT_USAGE, error))
    }
}

/// What every command proves itself with: its key file and, for
/// `tls+tcp://` addresses, its certificate.
#[derive(Args, Clone)]
pub(crate) struct CredentialArgs {
    #[command(flatten)]
    pub(crate) keys: KeyArgs,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

/// `fastworker keygen`.
#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the key (created with mode 600; an existing file is never overwritten).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Derive the key of this role (operator, client or worker) from the cluster key file given with --from.
    #[arg(long, requires = "from", value_parser = ["operator", "client", "worker"])]
    pub(crate) role: Option<String>,
    /// The cluster key file to derive a role key from.
    #[arg(long, requires = "role")]
    pub(crate) from: Option<PathBuf>,
    /// With `--role worker`: the `--worker-id` of the subworker the key is for (its file then also holds
    /// the control key with which that subworker knows its control plane).
    #[arg(long, required_if_eq("role", "worker"), value_parser = crate::cli::serve::worker_id)]
    pub(crate) worker_id: Option<String>,
}

/// Writes a new cluster key, or a role key derived from one.
pub(crate) fn keygen(args: KeygenArgs) -> ExitCode {
    let text = match (&args.role, &args.from) {
        (Some(role), Some(from)) => {
            let role = match role.as_str() {
                "operator" => Role::Operator,
                "client" => Role::Client,
                _ => Role::Worker,
            };
            match KeyRing::load(from).and_then(|ring| derived_key_file(&ring, role, args.worker_id.as_deref())) {
                Ok(text) => text,
                Err(error) => return fail(EXIT_USAGE, format_args!("--from: {error}")),
            }
        }
        _ => match new_cluster_key() {
            Ok(text) => text,
            Err(error) => return fail(EXIT_USAGE, format_args!("no randomness to make a key from: {error}")),
        },
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&args.out).and_then(|mut file| file.write_all(text.as_bytes()));
    match written {
        Ok(()) => {
            eprintln!("wrote {}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            fail(EXIT_USAGE, format_args!("{} exists; keygen never overwrites a key", args.out.display()))
        }
        Err(error) => fail(EXIT_USAGE, format_args!("cannot write {}: {error}", args.out.display())),
    }
}

/// Whether `host` (of a `tcp://HOST:PORT` address) is this machine only.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses to serve `what` on a non-loopback `host` without a key, unless
/// `--insecure` (protected mode).
pub(crate) fn protected(host: &str, what: &str, keyed: bool, insecure: bool) -> Result<(), ExitCode> {
    if keyed || insecure || is_loopback(host) {
        return Ok(());
    }
    Err(fail(
        EXIT_USAGE,
        format_args!(
            "{what} would listen on {host}, beyond this machine, with no key: anyone who can reach it could submit, read and forge tasks. \
             Make a key (`fastworker keygen --out cluster.key`) and pass --cluster-key-file, or listen on 127.0.0.1, or pass --insecure on a network you trust"
        ),
    ))
}
