//! The systemd units of `deploy/` (docs/deploy.md): `systemd-analyze
//! verify` finds nothing to say about them, with their `ExecStart` pointed
//! at the binary this workspace builds, and they keep the security options
//! the guide promises.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fastworker::TaskId;
use fastworker_tests::{fastworker_bin, output_within, stderr, stdout};

/// Where `systemd-analyze` is, if this machine has it.
fn systemd_analyze() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("systemd-analyze")).find(|file| file.is_file())
}

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `systemd-analyze verify` on `text` saved as `name` in a directory
/// of its own, and returns every line it printed about that unit.
fn verify(analyze: &Path, name: &str, text: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("fastworker-units-{}", TaskId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let mut command = Command::new(analyze);
    command.arg("verify").arg(&file).env("SYSTEMD_LOG_COLOR", "0");
    let output = output_within(command, Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&dir);
    let printed = format!("{}{}", stdout(&output), stderr(&output));
    let stem = name.split('@').next().unwrap_or(name).trim_end_matches(".service");
    let about: Vec<String> = printed.lines().filter(|line| line.contains(stem)).map(str::to_string).collect();
    assert!(output.status.success() || !about.is_empty(), "verify {name} failed:\n{printed}");
    about
}

#[test]
fn the_units_verify_without_a_warning() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("skipped: systemd-analyze is not on PATH, so the units cannot be verified here");
        return;
    };
    let binary = fastworker_bin().display().to_string();
    let units = [
        ("fastworker-control-plane.service", unit("fastworker-control-plane.service")),
        ("fastworker-subworker@.service", unit("fastworker-subworker@.service")),
    ];
    for (name, text) in &units {
        assert!(text.contains("ExecStart=/usr/local/bin/fastworker "), "{name}: {text}");
        let built = text.replace("ExecStart=/usr/local/bin/fastworker ", &format!("ExecStart={binary} "));
        // The template, and an instance of it, as systemd would load them.
        let mut names = vec![name.to_string()];
        if name.ends_with("@.service") {
            names.push(name.replace("@.service", "@sw1.service"));
        }
        for name in names {
            let warnings = verify(&analyze, &name, &built);
            assert!(warnings.is_empty(), "systemd-analyze verify {name}:\n{}", warnings.join("\n"));
        }
    }
    // And it does complain, here, about what is wrong in a unit.
    let broken = units[0].1.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    let warnings = verify(&analyze, "fastworker-control-plane.service", &broken);
    assert!(warnings.iter().any(|w| w.contains("NoNewPrivilege")), "a misspelt option passed: {warnings:?}");
    let unbuilt =
        verify(&analyze, "fastworker-control-plane.service", &units[0].1.replace("/usr/local/bin/", "/nowhere/"));
    assert!(unbuilt.iter().any(|w| w.contains("/nowhere/fastworker")), "a missing binary passed: {unbuilt:?}");
}

#[test]
fn the_units_keep_their_security_options() {
    for name in ["fastworker-control-plane.service", "fastworker-subworker@.service"] {
        let text = unit(name);
        let options: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
        for wanted in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
        ] {
            assert!(options.contains(&wanted), "{name} lacks {wanted}");
        }
        for prefix in ["LimitNOFILE=", "EnvironmentFile=", "LoadCredential=", "TimeoutStopSec="] {
            assert!(options.iter().any(|l| l.starts_with(prefix)), "{name} lacks {prefix}");
        }
    }
    // The control plane may write its --state-dir and nothing else.
    let text = unit("fastworker-control-plane.service");
    for wanted in [
        "StateDirectory=fastworker",
        "ReadWritePaths=/var/lib/fastworker",
        "Environment=FASTWORKER_STATE_DIR=/var/lib/fastworker",
    ] {
        assert!(text.lines().any(|l| l == wanted), "the control plane's unit lacks {wanted}");
    }
}

#[test]
fn the_example_environment_files_name_only_variables_the_commands_read() {
    let help = |command: &[&str]| {
        let mut run = Command::new(fastworker_bin());
        run.args(command).arg("--help");
        stdout(&output_within(run, Duration::from_secs(30)))
    };
    let general = help(&[]);
    for (file, command) in [("control-plane.env", "control-plane"), ("subworker.env", "subworker")] {
        let known = format!("{general}{}", help(&[command]));
        for line in unit(file).lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (variable, _) = line.split_once('=').unwrap_or_else(|| panic!("{file}: not VARIABLE=VALUE: {line}"));
            let named = [format!("env: {variable}="), format!("env: {variable}]"), format!("  {variable} ")]
                .iter()
                .any(|shown| known.contains(shown.as_str()));
            assert!(named, "{file}: fastworker {command} reads no {variable}");
        }
    }
}
