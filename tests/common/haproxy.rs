//! A real load balancer on loopback: Debian's `haproxy`, installed when
//! missing, in front of the replicas, with the configuration
//! `examples/replicas/haproxy.cfg` shows operators (sessions stick to the
//! replica that began them, and go to another when it is down), stopped
//! when dropped.

use std::path::Path;

pub struct Haproxy {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// HAProxy balancing over `replicas` (name, port), the example's
    /// configuration with the addresses replaced.
    pub async fn start(replicas: &[(&str, u16)]) -> Self {
        Self::start_at(super::ports::free_port(), replicas).await
    }

    /// [`Haproxy::start`], listening on `port` (a public URL the replicas
    /// are given before it starts).
    pub async fn start_at(port: u16, replicas: &[(&str, u16)]) -> Self {
        let program = super::debian::program(&["haproxy", "/usr/sbin/haproxy"], "haproxy");
        let dir = tempfile::tempdir().expect("a folder for HAProxy");
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/replicas/haproxy.cfg"),
        )
        .expect("the example's haproxy.cfg");
        // The example's frontend and servers, on this test's ports (no
        // Docker DNS here), each answer naming the replica that gave it
        // (`X-Portcullis-Replica`, for the test alone).
        let mut config: String = example
            .lines()
            .filter(|line| !line.trim_start().starts_with("server "))
            .map(|line| {
                let line = line.replace(" resolvers docker", "");
                if line.trim_start().starts_with("bind ") {
                    format!("    bind 127.0.0.1:{port}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        config.push_str("    http-response set-header X-Portcullis-Replica %s\n");
        for (name, replica_port) in replicas {
            config.push_str(&format!(
                "    server {name} 127.0.0.1:{replica_port} check inter 300ms fall 1 rise 1\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap();
        let check = std::process::Command::new(&program)
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .expect("haproxy -c");
        assert!(
            check.status.success(),
            "the example's haproxy.cfg is valid: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = std::process::Command::new(&program)
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        let haproxy = Self {
            child,
            port,
            _dir: dir,
        };
        super::ports::wait_listening(port, "haproxy").await;
        haproxy
    }

    /// The balancer's `/mcp`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
