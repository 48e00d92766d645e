//! What the security rows need: a cluster key made with `fastworker keygen`
//! and a CA with one certificate, made with the OpenSSL commands that
//! docs/security.md gives, in a directory removed when dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A cluster key and a certificate for 127.0.0.1, as files.
pub(crate) struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    /// Makes them next to `binary`.
    pub(crate) fn make(binary: &Path) -> Result<Credentials, String> {
        let dir = binary.with_file_name(format!("fastworker-bench-credentials-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let credentials = Credentials { dir };
        let key = credentials.path("cluster.key");
        run(Command::new(binary).args(["keygen", "--out"]).arg(&key))?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let at = |name: &str| credentials.path(name);
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .arg("-keyout")
            .arg(at("ca.key"))
            .arg("-out")
            .arg(at("ca.pem"))
            .args(["-days", "2", "-subj", "/CN=fastworker bench CA"]))?;
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .arg("-keyout")
            .arg(at("member.key"))
            .arg("-out")
            .arg(at("member.csr"))
            .args(["-subj", "/CN=127.0.0.1"]))?;
        run(Command::new("openssl")
            .args(["x509", "-req", "-in"])
            .arg(at("member.csr"))
            .arg("-CA")
            .arg(at("ca.pem"))
            .arg("-CAkey")
            .arg(at("ca.key"))
            .args(["-CAcreateserial", "-days", "2", "-out"])
            .arg(at("member.pem")))?;
        Ok(credentials)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `--cluster-key-file` and its file.
    pub(crate) fn key_flags(&self) -> Vec<OsString> {
        vec!["--cluster-key-file".into(), self.path("cluster.key").into()]
    }

    /// `--tls-cert`, `--tls-key`, `--tls-ca` and their files.
    pub(crate) fn tls_flags(&self) -> Vec<OsString> {
        vec![
            "--tls-cert".into(),
            self.path("member.pem").into(),
            "--tls-key".into(),
            self.path("member.key").into(),
            "--tls-ca".into(),
            self.path("ca.pem").into(),
        ]
    }

    /// Installs the certificate as this process's TLS identity.
    pub(crate) fn install_tls(&self) -> Result<(), String> {
        let tls = fastworker::tls::Tls::load(&self.path("member.pem"), &self.path("member.key"), &self.path("ca.pem"))
            .map_err(|e| e.to_string())?;
        fastworker::tls::install(tls).map_err(|e| e.to_string())
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("running {command:?}: {e} (the TLS rows need openssl)"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr)))
    }
}
