//! A `tls+tcp://` cluster: a control plane, two subworkers with different
//! plugins and clients, all presenting certificates of one CA, run tasks end
//! to end; a plain `tcp://` peer and a peer with another CA's certificate
//! cannot talk to it; TLS addresses without certificates are refused at
//! start-up.

use std::path::{Path, PathBuf};
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
    // Both sides say so in their logs, not only a timeout.
    let dialed = "TLS handshakes with the peer dialed failed";
    assert!(stderr(&output).contains(dialed), "the intruder's side says nothing: {}", stderr(&output));
    let here = "TLS handshakes of peers connecting here failed";
    assert!(
        fastworker_tests::wait_until(Duration::from_secs(10), || cp.log().contains(here)),
        "the control plane logged no failed handshake:\n{}",
        cp.log()
    );

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

/// The ```sh blocks of docs/security.md, in order.
fn security_doc_blocks() -> Vec<String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md")).unwrap();
    doc.split("```sh\n").skip(1).map(|rest| rest.split("```").next().unwrap().to_string()).collect()
}

#[test]
fn the_documented_key_and_tls_recipe_runs_as_written() {
    let blocks = security_doc_blocks();
    let block =
        |needle: &str| blocks.iter().find(|b| b.contains(needle)).unwrap_or_else(|| panic!("no {needle} block"));
    let dir = std::env::temp_dir().join(format!("fastworker-recipe-{}", TaskId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin_dir = fastworker_tests::fastworker_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    // The keys, then the CA and certificates, as the page writes them.
    for needle in ["fastworker keygen --out cluster.key", "openssl req -x509"] {
        let output = std::process::Command::new("sh")
            .args(["-e", "-c", block(needle)])
            .current_dir(&dir)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(output.status.success(), "the block of {needle} failed: {}", stderr(&output));
    }
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    for key in ["cluster.key", "worker.key", "client.key", "operator.key"] {
        assert!(
            text(key).lines().any(|l| l.starts_with("fastworker-key v1")),
            "{key} is not a fastworker key any more"
        );
    }
    for pem in ["tls-client.key", "tls-sw1.key", "tls-control-plane.pem", "tls-ca.pem"] {
        assert!(text(pem).starts_with("-----BEGIN"), "{pem} is missing");
    }
    // The three commands, with local addresses and the example plugin.
    let (base, sw_port) = (free_base_port(), free_ports(4));
    let commands = block("fastworker control-plane").replace("\\\n", " ");
    let commands: Vec<Vec<String>> = commands
        .lines()
        .filter(|line| line.starts_with("fastworker "))
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .map(|word| match word {
                    "tls+tcp://0.0.0.0:5555" | "tls+tcp://cp.example.net:5555" => format!("tls+tcp://127.0.0.1:{base}"),
                    "tls+tcp://0.0.0.0:5561" | "tls+tcp://sw1.example.net:5561" => {
                        format!("tls+tcp://127.0.0.1:{sw_port}")
                    }
                    "libmytasks.so" => plugin("example-tasks").display().to_string(),
                    file if dir.join(file).is_file() => dir.join(file).display().to_string(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    let mut cp_args = commands[0].clone();
    // Local only: no dashboard on the shared port 8080, no announcements.
    cp_args.extend(strings(&["--no-gui", "--no-discovery"]));
    let address = format!("tls+tcp://127.0.0.1:{base}");
    let mut cp = Process::spawn(&cp_args, &[], address.clone());
    cp.wait_for_port(base + 4, Duration::from_secs(20)).unwrap();
    let mut sw = Process::spawn(&commands[1], &[], format!("tls+tcp://127.0.0.1:{sw_port}"));
    sw.wait_for_port(sw_port, Duration::from_secs(20)).unwrap();
    assert!(
        fastworker_tests::wait_until(Duration::from_secs(20), || cp.log().contains("sw1")),
        "sw1 did not register:\n{}\n{}",
        cp.log(),
        sw.log()
    );
    let submit: Vec<&str> = commands[2].iter().map(String::as_str).collect();
    let output = run_cli(&submit);
    assert!(output.status.success(), "the documented submit failed: {}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "5");
    // The old mistake, a TLS file given as the fastworker key, and the reverse, are named as such.
    let swap = |from: &str, to: &str| -> Vec<String> {
        submit.iter().map(|w| if w.ends_with(from) { w.replace(from, to) } else { w.to_string() }).collect()
    };
    for (args, says) in [
        (
            swap("/client.key", "/tls-client.key"),
            "is a PEM file (a TLS private key), not a fastworker key: give it to --tls-key",
        ),
        (swap("/tls-client.pem", "/client.key"), "is a fastworker key (it belongs to --cluster-key-file)"),
    ] {
        let output = run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains(says), "{}", stderr(&output));
    }
    let cert_as_key = swap("/client.key", "/tls-client.pem");
    let output = run_cli(&cert_as_key.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stderr(&output).contains("a certificate") && stderr(&output).contains("--tls-cert"), "{}", stderr(&output));
    let _ = std::fs::remove_dir_all(&dir);
}
