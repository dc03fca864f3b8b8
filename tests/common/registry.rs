//! A real OCI registry on loopback: Debian's `docker-registry` (the CNCF
//! distribution registry), installed when missing, its storage in a
//! temporary folder, stopped when dropped.

use std::time::Duration;

pub struct Registry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    _storage: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> Self {
        // The tests' HTTP client (reqwest) uses the proxy's crypto: ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let program = super::debian::program(
            &["docker-registry", "/usr/bin/docker-registry"],
            "docker-registry",
        );
        let storage = tempfile::tempdir().expect("a storage folder");
        let port = super::free_port();
        let address = format!("127.0.0.1:{port}");
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
                storage.path().join("data").display()
            ),
        )
        .expect("write the registry's config");
        let child = std::process::Command::new(program)
            .arg("serve")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            address,
            _storage: storage,
        };
        let url = format!("http://{}/v2/", registry.address);
        for _ in 0..100 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the registry did not answer on {url}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
