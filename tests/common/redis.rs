//! A real Redis on loopback: Debian's `redis-server`, installed when
//! missing, with a password and no persistence, in a temporary folder,
//! stopped when dropped (or at once with [`Redis::stop`]).

use std::path::PathBuf;

/// The server's password (a test value, not a token).
pub const PASSWORD: &str = "shared-quota-password";

pub struct Redis {
    child: Option<std::process::Child>,
    pub port: u16,
    /// A file holding the password (`password = "file:…"`).
    pub password_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A Redis that speaks TLS only, with the certificate `cert` and key
    /// `key` (clients are not asked for one).
    pub async fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::start_with(Some((cert, key))).await
    }

    async fn start_with(tls: Option<(&std::path::Path, &std::path::Path)>) -> Self {
        let program =
            super::debian::program(&["redis-server", "/usr/bin/redis-server"], "redis-server");
        let dir = tempfile::tempdir().expect("a folder for Redis");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        let port = super::free_port();
        let mut command = std::process::Command::new(program);
        command.args(["--bind", "127.0.0.1"]);
        match tls {
            None => command.args(["--port", &port.to_string()]),
            Some((cert, key)) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args([
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Self {
            child: Some(child),
            port,
            password_file,
            _dir: dir,
        };
        super::ports::wait_listening(port, "redis-server").await;
        redis
    }

    /// `redis://127.0.0.1:PORT`, without the password.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
