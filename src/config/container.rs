//! `container` servers: what the config says, validated into a
//! [`ContainerSpec`] whose [`Sandbox`] holds the hardened default profile
//! with the server's relaxations applied (`[servers.sandbox]`, in
//! `sandbox.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::sandbox::RawSandbox;
use super::secrets::{check_args, check_env};
use super::values::DurationText;
use super::{ConfigError, Entry, ProxyConfig, Sandbox, parse_duration};

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub image: String,
    /// `sha256:…`: the image's id or one of its repo digests must match.
    pub digest: Option<String>,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments (the image's `CMD`).
    pub args: Vec<String>,
    /// Plain environment; secrets go in the server's `secrets`.
    pub env: BTreeMap<String, String>,
    pub pull: PullPolicy,
    pub start: StartPolicy,
    /// Stop the container after this long without a call (lazy servers).
    pub idle_timeout: Option<Duration>,
    pub isolation: Isolation,
    pub sandbox: Sandbox,
    /// Stdio through FIFOs instead of the engine's attach stream.
    pub fifos: Option<Fifos>,
    /// A `docker://` server: its command and environment come from the
    /// image's `io.docker.server.metadata` label, read (and checked against
    /// the sandbox) each time the container starts, from the image that
    /// runs.
    pub label: Option<super::catalog::Operator>,
    /// Its image must carry a cosign signature by one of `signature_keys`
    /// (`[signatures]`), checked at each start.
    pub require_signature: bool,
    pub signature_keys: super::SignatureKeys,
    /// Each user's instance is given that user's own token (`sign_in`).
    pub sign_in: Option<Box<super::ContainerSignIn>>,
    /// What its description (a catalog entry, `file://`) labels its items
    /// (`[flow]` takes them at start).
    pub described_labels: Option<Box<super::DescribedLabels>>,
}

/// Where a `stdio = "fifo"` server's FIFOs and launcher come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fifos {
    /// The static `portcullis-bridge` on the host.
    pub bridge: PathBuf,
    /// A folder of the proxy's own, holding one private folder per container.
    pub run_dir: PathBuf,
}

/// `[servers.container] pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Never pull: a missing image is an error that says how to build it.
    Never,
    /// Pull when the engine does not have the image.
    Missing,
}

/// `[servers.container] start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StartPolicy {
    /// At its first use: the first client session's `initialize` starts it
    /// and reads its lists.
    Lazy,
    /// With the proxy.
    Eager,
}

/// `[servers.container] isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// One container for every client.
    Shared,
    /// One container per client identity: tenants never share a process.
    PerClient,
}

/// `[servers.container] stdio`: how MCP crosses into the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Stdio {
    /// The engine's attach stream.
    Attach,
    /// Two FIFOs in a private folder, with `[proxy] bridge` as the
    /// container's launcher.
    Fifo,
}

/// `[servers.container]`: an image run under the hardened profile.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainer {
    /// The image, by name and tag or by id (with `from`: the metadata's,
    /// and not written here).
    #[schemars(extend("x-default" = "required, unless the server has `from`"))]
    image: Option<String>,
    /// `sha256:` and 64 hex digits: the image's id or one of its repo digests
    /// must match, or the server does not start.
    digest: Option<String>,
    /// Replaces the image's `ENTRYPOINT`; a program and its first arguments.
    #[schemars(extend("x-default" = "the image's"))]
    entrypoint: Option<Vec<String>>,
    /// The program's arguments, in place of the image's `CMD`; one that
    /// looks like a literal secret is refused.
    #[serde(default)]
    #[schemars(extend("x-default" = "the image's `CMD`"))]
    args: Vec<String>,
    /// Plain environment variables; one that looks like a literal secret is
    /// refused (secrets go in the server's `secrets`).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Whether a missing image is pulled.
    #[schemars(extend("default" = "never"))]
    pull: Option<PullPolicy>,
    /// When the container starts.
    #[schemars(extend("default" = "lazy"))]
    start: Option<StartPolicy>,
    /// The container is stopped and removed after this long without a call;
    /// the next call starts a fresh one.
    #[schemars(
        with = "Option<DurationText>",
        extend("x-default" = "`10m` for `lazy` servers; never for `eager` ones")
    )]
    idle_timeout: Option<String>,
    /// Who shares a container.
    #[schemars(extend("default" = "shared"))]
    isolation: Option<Isolation>,
    /// Its image must be signed (cosign) by one of `[signatures] keys`,
    /// checked before each start.
    #[schemars(extend("default" = false))]
    require_signature: Option<bool>,
    /// How MCP crosses into the container.
    #[schemars(extend("x-default" = "`fifo` when `[proxy] bridge` is set, else `attach`"))]
    stdio: Option<Stdio>,
    /// Each user signs in at an authorization server (`portcullis oauth
    /// login SERVER --client NAME`, or the link a call is answered with),
    /// and that user's own instance of the container (`isolation =
    /// "per-client"`) is given the user's access token in an environment
    /// variable, as an image that expects a token there (a GitHub server
    /// and `GITHUB_PERSONAL_ACCESS_TOKEN`) takes it. Needs `[vault] keys`.
    /// See docs/signin.md.
    pub(super) sign_in: Option<super::vault::RawContainerSignIn>,
}

impl RawContainer {
    /// A container server; `at` is its entry, `sandbox` its
    /// `[servers.sandbox]`.
    pub(super) fn validate(
        self,
        at: &Entry<'_>,
        server: &str,
        sandbox: Option<RawSandbox>,
        proxy: &ProxyConfig,
    ) -> Result<ContainerSpec, ConfigError> {
        let fail = |key: &str, message: String| Err(at.error(key, message));
        let image = match &self.image {
            Some(image) if !image.trim().is_empty() => image.clone(),
            Some(_) => return fail(".container.image", "the image is empty".into()),
            None => {
                return fail(
                    ".container.image",
                    format!("server `{server}` needs an `image` (or a `from` reference)"),
                );
            }
        };
        if let Some(digest) = &self.digest {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return fail(
                    ".container.digest",
                    format!(
                        "`{}` is not an image digest like `sha256:` followed by 64 hex digits",
                        super::names::shown(digest)
                    ),
                );
            }
        }
        self.check_command(at)?;
        let idle_timeout = match &self.idle_timeout {
            None => None,
            Some(text) => {
                Some(parse_duration(text).map_err(|m| at.error(".container.idle_timeout", m))?)
            }
        };
        let fifos = fifos(self.stdio, at, server, proxy)?;
        let sandbox = sandbox.unwrap_or_default().validate(at)?;
        let dangers = sandbox.dangers();
        if !dangers.is_empty() && !sandbox.allow_dangerous {
            return fail(
                ".sandbox",
                format!(
                    "server `{server}` asks for {}; refused, since it gives the container power over the host. Set `allow_dangerous = true` in `[servers.sandbox]` if you really mean it",
                    dangers.join(", ")
                ),
            );
        }
        Ok(ContainerSpec {
            image,
            digest: self.digest.map(|d| d.to_ascii_lowercase()),
            entrypoint: self.entrypoint,
            args: self.args,
            env: self.env,
            pull: self.pull.unwrap_or(PullPolicy::Never),
            start: self.start.unwrap_or(StartPolicy::Lazy),
            idle_timeout,
            isolation: self.isolation.unwrap_or(Isolation::Shared),
            sandbox,
            fifos,
            label: None,
            require_signature: self.require_signature.unwrap_or(false),
            signature_keys: std::sync::Arc::default(),
            // Validated by the server, which holds the secrets.
            sign_in: None,
            described_labels: None,
        })
    }

    /// The container of a server described by metadata (`from`): its image
    /// and command are the metadata's, so the operator's table may set only
    /// how it runs.
    pub(super) fn described(
        mut self,
        at: &Entry<'_>,
        image: String,
        digest: Option<String>,
    ) -> Result<Self, ConfigError> {
        let written = [
            ("image", self.image.is_some()),
            ("entrypoint", self.entrypoint.is_some()),
            ("args", !self.args.is_empty()),
            ("env", !self.env.is_empty()),
            ("sign_in", self.sign_in.is_some()),
        ];
        if let Some((key, _)) = written.iter().find(|(_, set)| *set) {
            return Err(at.error(
                &format!(".container.{key}"),
                "a server with `from` takes its image and command from its metadata; `container` may set only `digest` (a pin), `pull`, `start`, `idle_timeout`, `isolation` and `stdio`".into(),
            ));
        }
        // The operator may pin the image the description names (a catalog
        // that names a tag runs what the tag points at); both pins, if
        // both are written, must agree.
        let operator = self.digest.as_ref().map(|d| d.to_ascii_lowercase());
        if let (Some(pinned), Some(described)) = (&operator, &digest)
            && pinned != described
        {
            return Err(at.error(
                ".container.digest",
                format!(
                    "pins `{pinned}`, but the description pins `{}`",
                    super::names::shown(described)
                ),
            ));
        }
        self.image = Some(image);
        self.digest = operator.or(digest);
        Ok(self)
    }

    /// The entrypoint names a program; no literal secret in the command or
    /// its environment.
    fn check_command(&self, at: &Entry<'_>) -> Result<(), ConfigError> {
        if let Some(entrypoint) = &self.entrypoint
            && entrypoint.is_empty()
        {
            return Err(at.error(
                ".container.entrypoint",
                "must name a program; leave it out to use the image's".into(),
            ));
        }
        check_env(&self.env)
            .map_err(|(key, message)| at.error(&format!(".container.env.{key}"), message))?;
        check_args(&self.args)
            .map_err(|(index, message)| at.error(&format!(".container.args[{index}]"), message))?;
        if let Some(entrypoint) = &self.entrypoint {
            check_args(entrypoint).map_err(|(index, message)| {
                at.error(&format!(".container.entrypoint[{index}]"), message)
            })?;
        }
        Ok(())
    }
}

/// The FIFOs of a server with `stdio = "fifo"`: whenever a bridge is
/// configured, unless the server says otherwise.
fn fifos(
    stdio: Option<Stdio>,
    at: &Entry<'_>,
    server: &str,
    proxy: &ProxyConfig,
) -> Result<Option<Fifos>, ConfigError> {
    let stdio = stdio.unwrap_or(if proxy.bridge.is_some() {
        Stdio::Fifo
    } else {
        Stdio::Attach
    });
    match (stdio, &proxy.bridge) {
        (Stdio::Attach, _) => Ok(None),
        (Stdio::Fifo, Some(bridge)) => Ok(Some(Fifos {
            bridge: bridge.clone(),
            run_dir: proxy.data_dir.join("run"),
        })),
        (Stdio::Fifo, None) => Err(at.error(
            ".container.stdio",
            format!(
                "server `{server}`: `stdio = \"fifo\"` needs `[proxy] bridge`, the path of a static `portcullis-bridge` (scripts/build-test-image.sh builds one at target/static/portcullis-bridge)"
            ),
        )),
    }
}
