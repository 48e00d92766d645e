//! A `tls+tcp://` cluster: a control plane, two subworkers with different
//! plugins and clients, all presenting certificates of one CA, run tasks end
//! to end; a plain `tcp://` peer and a peer with another CA's certificate
//! cannot talk to it; TLS addresses without certificates are refused at
//! start-up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fastworker::protocol::WorkerState;
use fastworker::tls::Tls;
use fastworker::{Client, TaskId};
use fastworker_tests::{free_base_port, free_ports, plugin, run_cli, runtime, stderr, stdout, Process};
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, SanType};

/// A throwaway CA and the certificates it signed, as PEM files.
struct Pki {
    dir: PathBuf,
    ca: (Certificate, KeyPair),
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("fastworker-pki-{name}-{}", TaskId::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Pki { dir, ca: (cert, key) }
    }

    /// Makes `member`'s certificate for 127.0.0.1; its three TLS flags.
    fn member(&self, member: &str) -> Vec<String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        params.subject_alt_names =
            vec![SanType::DnsName("127.0.0.1".try_into().unwrap()), SanType::DnsName("localhost".try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca.0, &self.ca.1).unwrap();
        let (cert_path, key_path) = (self.dir.join(format!("{member}.pem")), self.dir.join(format!("{member}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        vec![
            "--tls-cert".into(),
            cert_path.display().to_string(),
            "--tls-key".into(),
            key_path.display().to_string(),
            "--tls-ca".into(),
            self.dir.join("ca.pem").display().to_string(),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn subworker(cp: &Process, pki: &Pki, worker_id: &str, package: &str) -> Process {
    let address = format!("tls+tcp://127.0.0.1:{}", free_ports(4));
    let mut args = strings(&["subworker", "--worker-id", worker_id, "--control-plane-address", &cp.address]);
    args.extend(strings(&["--base-address", &address, "--task-modules", &plugin(package).display().to_string()]));
    args.extend(pki.member(worker_id));
    Process::spawn(&args, &[], address)
}

#[test]
fn a_tls_cluster_runs_tasks_and_refuses_plain_and_foreign_peers() {
    let pki = Pki::new("cluster");
    let client_flags = pki.member("client");
    let flag = |name: &str| client_flags[client_flags.iter().position(|f| f == name).unwrap() + 1].clone();
    // This test process is a member too: its client dials tls+tcp:// with a certificate of the CA.
    let identity = Tls::load(flag("--tls-cert").as_ref(), flag("--tls-key").as_ref(), flag("--tls-ca").as_ref());
    fastworker::tls::install(identity.unwrap()).unwrap();

    // A control plane with no plugin of its own: every task runs on a subworker.
    let base = free_base_port();
    let address = format!("tls+tcp://127.0.0.1:{base}");
    let mut args = strings(&["control-plane", "--base-address", &address, "--no-gui", "--no-discovery"]);
    args.extend(pki.member("control-plane"));
    let mut cp = Process::spawn(&args, &[], address.clone());
    cp.wait_ready(Duration::from_secs(20)).unwrap();
    let _sw1 = subworker(&cp, &pki, "sw1", "example-tasks");
    let _sw2 = subworker(&cp, &pki, "sw2", "text-tasks");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let active = cp.workers().map(|c| c.subworkers.iter().filter(|w| w.status == WorkerState::Active).count());
        if active.as_ref().is_ok_and(|n| *n == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "subworkers never came up over TLS: {active:?}\n{}", cp.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // End to end through each subworker, from this process and from the command line.
    let client = Client::new(&address).unwrap().with_timeout(Duration::from_secs(10));
    let rt = runtime();
    let sums = rt.block_on(async {
        let calls = (0..50i64).map(|i| {
            let client = client.clone();
            async move { client.call::<i64>("add", (i, 1000)).await }
        });
        let mut sums = Vec::new();
        for call in calls {
            sums.push(call.await.unwrap());
        }
        sums
    });
    assert_eq!(sums, (0..50i64).map(|i| i + 1000).collect::<Vec<_>>());
    let shout: String = rt.block_on(client.call("upper", ("tls",))).unwrap();
    assert_eq!(shout, "TLS");
    let mut cli = strings(&["submit", "--address", &address, "--task-name", "add", "--args", "20", "22"]);
    cli.extend(client_flags.clone());
    let output = run_cli(&cli.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "42");

    // A plain tcp:// peer on the same ports gets nothing.
    let plain = Client::new(&format!("tcp://127.0.0.1:{base}")).unwrap().with_timeout(Duration::from_secs(2));
    assert!(rt.block_on(plain.call::<i64>("add", (1, 2))).is_err(), "a plain tcp:// peer was served");

    // A peer whose certificate another CA signed is refused in the handshake.
    let foreign = Pki::new("foreign");
    let mut cli =
        strings(&["submit", "--address", &address, "--timeout", "2", "--task-name", "add", "--args", "1", "2"]);
    cli.extend(foreign.member("intruder"));
    let output = run_cli(&cli.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!output.status.success(), "a peer of another CA was served: {}", stdout(&output));
    assert!(!stdout(&output).contains('3'));

    // Still serving members after both.
    let sum: i64 = rt.block_on(client.call("add", (2, 3))).unwrap();
    assert_eq!(sum, 5);
}

#[test]
fn tls_addresses_without_certificates_are_refused_at_start() {
    let address = format!("tls+tcp://127.0.0.1:{}", free_base_port());
    let output = run_cli(&["control-plane", "--base-address", &address, "--no-gui", "--no-discovery"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--tls-cert, --tls-key and --tls-ca"), "{}", stderr(&output));

    let output = run_cli(&["submit", "--address", &address, "--task-name", "add", "--args", "1", "2"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--address: tls+tcp://"), "{}", stderr(&output));

    let pki = Pki::new("partial");
    let flags = pki.member("cp");
    let output = run_cli(&["control-plane", "--base-address", &address, "--no-gui", "--tls-cert", &flags[1]]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("together"), "{}", stderr(&output));

    // A missing certificate, and one that is not PEM, are refused with a reason, not a crash.
    let start_with = |cert: &str| {
        let tls = ["--tls-cert", cert, "--tls-key", &flags[3], "--tls-ca", &flags[5]];
        let output =
            run_cli(&[&["control-plane", "--base-address", &address, "--no-gui", "--no-discovery"][..], &tls].concat());
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        stderr(&output)
    };
    let missing = start_with(&flags[5].replace("ca.pem", "missing.pem"));
    assert!(missing.contains("--tls-cert"), "{missing}");
    std::fs::write(&flags[1], "not a certificate").unwrap();
    let garbage = start_with(&flags[1]);
    assert!(garbage.contains("not usable"), "{garbage}");
}
