//! A real PostgreSQL server on loopback: Debian's `postgresql`, installed
//! when missing, its cluster made by `initdb` in a temporary folder (as the
//! `postgres` user when the tests run as root: the server refuses root),
//! with one password-protected user, stopped when dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub const USER: &str = "portcullis";
pub const DATABASE: &str = "portcullis";
/// The user's password (a test value, not a token).
pub const PASSWORD: &str = "fleet-log-password";

pub struct Postgres {
    child: std::process::Child,
    pub port: u16,
    /// A file holding the password (for `[audit.ship] password = "file:…"`).
    pub password_file: PathBuf,
    dir: tempfile::TempDir,
}

/// The folder of the newest PostgreSQL's programs (`/usr/lib/postgresql/N/bin`).
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn programs() -> PathBuf {
    if let Some(bin) = bin_dir() {
        return bin;
    }
    super::debian::program(
        &["/usr/lib/postgresql/15/bin/initdb", "initdb"],
        "postgresql",
    );
    bin_dir().expect("Debian's postgresql installed its programs under /usr/lib/postgresql")
}

/// `program` run as the `postgres` user when this process is root.
fn command(program: &Path) -> std::process::Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut command = std::process::Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        command
    } else {
        std::process::Command::new(program)
    }
}

impl Postgres {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server that also speaks TLS, with the certificate `cert` and key
    /// `key` (copied into its folder, as its user's).
    pub async fn start_tls(cert: &Path, key: &Path) -> Self {
        Self::start_with(Some((cert, key))).await
    }

    async fn start_with(tls: Option<(&Path, &Path)>) -> Self {
        let bin = programs();
        let dir = tempfile::tempdir().expect("a folder for the cluster");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        let (server_cert, server_key) =
            (dir.path().join("server.pem"), dir.path().join("server.key"));
        let mut ssl = Vec::new();
        if let Some((cert, key)) = tls {
            std::fs::copy(cert, &server_cert).unwrap();
            std::fs::copy(key, &server_key).unwrap();
            std::fs::set_permissions(
                &server_key,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            for setting in [
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", server_cert.display()),
                format!("ssl_key_file={}", server_key.display()),
            ] {
                ssl.extend(["-c".to_owned(), setting]);
            }
        }
        if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("Debian's postgresql made the `postgres` user");
            let mut owned = vec![dir.path(), password_file.as_path()];
            if tls.is_some() {
                owned.extend([server_cert.as_path(), server_key.as_path()]);
            }
            for path in owned {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .unwrap();
            }
        }
        let data = dir.path().join("data");
        let output = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let port = super::free_port();
        let child = command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(&ssl)
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .arg("-p")
            .arg(port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start postgres");
        let server = Self {
            child,
            port,
            password_file,
            dir,
        };
        // The database the proxy ships to, made once the server answers.
        for _ in 0..200 {
            if let Ok(client) = server.connect_to("postgres").await {
                client
                    .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                    .await
                    .expect("create the database");
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("PostgreSQL did not answer on 127.0.0.1:{}", server.port);
    }

    /// `postgres://USER@127.0.0.1:PORT/DATABASE`, without the password.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// A client of the database, as the test's own (to read and tamper).
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_to(DATABASE)
            .await
            .expect("connect to the database")
    }

    async fn connect_to(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .password(PASSWORD)
            .dbname(database)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: the server's fast shutdown.
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
