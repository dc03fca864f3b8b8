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
        let program =
            super::debian::program(&["redis-server", "/usr/bin/redis-server"], "redis-server");
        let dir = tempfile::tempdir().expect("a folder for Redis");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        let port = super::free_port();
        let child = std::process::Command::new(program)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
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
