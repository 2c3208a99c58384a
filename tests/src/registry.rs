//! A real OCI registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry, 2.8) serving plain HTTP on a free loopback port,
//! its storage and configuration under cargo's target directory
//! (`<target>/services/registry-…`, removed on drop unless
//! `KILN_KEEP_SERVICES=1`), optionally behind htpasswd basic auth
//! ([`USER`], [`PASSWORD`]). `scripts/lib/registry.sh` installs it and
//! `skopeo` (`ensure_registry_packages`).
//!
//! The registry runs in a process group led by a watchdog (as the servers
//! of [`crate::cluster`]), so a test killed by a timeout leaves none behind.
//!
//! What the tests rely on, as Debian's 2.8.2 behaves (checked by hand and by
//! tests/tests/publish.rs):
//! - it serves an OCI index or manifest only to a client whose `Accept`
//!   names that media type (otherwise 404 `MANIFEST_UNKNOWN`);
//! - it has no referrers API (`/v2/<repo>/referrers/<digest>` is 404), so
//!   referrers go through the tag schema (`sha256-<hex>` tags);
//! - an index naming a child the repository lacks is refused with 400
//!   `MANIFEST_BLOB_UNKNOWN`;
//! - `garbage-collect --delete-untagged=true` deletes the manifests no tag
//!   names, children of a tagged index included: the per-platform tags are
//!   what keeps them.
//!
//! [`push_synthetic_image`] pushes a tiny image for one platform with plain
//! HTTP requests (no registry client library: the tests check the one Kiln
//! uses, they do not share it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context as _, bail};

use crate::cluster::{Group, RunDir, free_port, wait_port};

/// The user of a registry started with [`Registry::start_with_auth`].
pub const USER: &str = "kiln";
/// Its password.
pub const PASSWORD: &str = "publish-s3cret";
/// bcrypt of [`PASSWORD`] (cost 5), the only hash the registry's htpasswd
/// accepts: precomputed, so that the tests need no bcrypt tool.
const PASSWORD_BCRYPT: &str = "$2b$05$eWomB2Vhar3BvvXMhuQ02.M0RMfh5nrec5CLzRN0dYydxOqx4xGJi";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest media type: what a client must accept to be served any.
pub const ALL_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The layer of every synthetic image: an empty tar archive (1024 zero
/// bytes), gzipped without name or time.
const LAYER_GZ: [u8; 29] = [
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xff, 0x63, 0x60, 0x18, 0x05, 0xa3, 0x60,
    0x14, 0x8c, 0x54, 0x00, 0x00, 0x2e, 0xaf, 0xb5, 0xef, 0x00, 0x04, 0x00, 0x00,
];

/// A running registry; dropping it kills it and removes its files.
pub struct Registry {
    port: u16,
    auth: bool,
    config: PathBuf,
    child: Child,
    http: reqwest::Client,
    // Dropped after `child` is killed (field order): the group, then the files.
    _group: Group,
    dir: RunDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host())
            .field("auth", &self.auth)
            .field("dir", &self.dir.path)
            .finish_non_exhaustive()
    }
}

/// The registry program: `$KILN_REGISTRY_BIN`, else Debian's
/// `docker-registry`, else upstream's `registry`.
fn registry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_REGISTRY_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["docker-registry", "registry"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("docker-registry")
}

impl Registry {
    /// A registry open to anyone.
    pub async fn start() -> anyhow::Result<Self> {
        Self::spawn(false).await
    }

    /// A registry that answers 401 to anyone but [`USER`]:[`PASSWORD`].
    pub async fn start_with_auth() -> anyhow::Result<Self> {
        Self::spawn(true).await
    }

    async fn spawn(auth: bool) -> anyhow::Result<Self> {
        let dir = RunDir::new("registry")?;
        let group = Group::start()?;
        // The tests' reqwest has no TLS provider of its own (plain HTTP here,
        // but the client is built with rustls); installing it twice is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        let log = dir.path.join("registry.log");
        let bin = registry_bin();
        let mut last = anyhow::anyhow!("the registry did not start");
        // A port found free may be taken before the registry binds it (by
        // another test's server): then something else answers there, and
        // the registry exits. Try another port.
        for _ in 0..5 {
            let port = free_port(&mut Vec::new())?;
            let config = write_config(&dir.path, port, auth)?;
            let mut child = group
                .spawn(Command::new(&bin).arg("serve").arg(&config), &log)
                .with_context(|| {
                    format!(
                        "cannot start {} (install Debian's docker-registry: \
                         scripts/lib/registry.sh, ensure_registry_packages)",
                        bin.display()
                    )
                })?;
            let started = wait_port(port, "docker-registry", &mut child, &log).await;
            if let Err(e) = started {
                last = e;
            } else if answers_as_registry(&http, port, &mut child).await {
                return Ok(Self {
                    port,
                    auth,
                    config,
                    child,
                    http,
                    _group: group,
                    dir,
                });
            } else {
                last = anyhow::anyhow!("port {port} is another server's");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(last)
    }

    /// `127.0.0.1:<port>`: the registry part of its image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>/<repo>:<tag>`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// The registry's own directory (configuration, log, storage).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// What the registry logged so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("registry.log")).unwrap_or_default()
    }

    /// Writes `<dir>/config.json`, a docker config with `user`:`password`
    /// for this registry (what a tenant's registry Secret holds), and
    /// returns `dir`: the value of `DOCKER_CONFIG`.
    pub fn write_docker_config(
        &self,
        dir: &Path,
        user: &str,
        password: &str,
    ) -> anyhow::Result<PathBuf> {
        use base64::Engine as _;
        std::fs::create_dir_all(dir)?;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let config = serde_json::json!({ "auths": { self.host(): { "auth": auth } } });
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
        Ok(dir.to_path_buf())
    }

    /// `registry garbage-collect --delete-untagged=true` on the registry's
    /// storage (while it runs: the tests push nothing meanwhile). Returns
    /// what it printed.
    pub async fn garbage_collect(&self) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(registry_bin())
            .args(["garbage-collect", "--delete-untagged=true"])
            .arg(&self.config)
            .output()
            .await
            .context("cannot run the registry's garbage-collect")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("garbage-collect failed ({}): {text}", out.status);
        }
        Ok(text)
    }

    /// `skopeo inspect --raw --tls-verify=false docker://<reference>`: the
    /// manifest or index bytes as a client nobody here wrote reads them.
    pub async fn skopeo_inspect_raw(&self, reference: &str) -> anyhow::Result<Vec<u8>> {
        let mut cmd = tokio::process::Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if self.auth {
            cmd.arg(format!("--creds={USER}:{PASSWORD}"));
        }
        let out = cmd
            .arg(format!("docker://{reference}"))
            .output()
            .await
            .context("cannot run skopeo (install Debian's skopeo)")?;
        if !out.status.success() {
            bail!(
                "skopeo inspect {reference} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/v2/{path}", self.host())
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        if self.auth {
            req.basic_auth(USER, Some(PASSWORD))
        } else {
            req
        }
    }

    /// The manifest `reference` (a tag or digest) of `repo` as served to a
    /// client accepting `accept`; `None` when the registry answers 404.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> anyhow::Result<Option<Fetched>> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &self.url(&format!("{repo}/manifests/{reference}")),
            )
            .header("Accept", accept.join(", "))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("GET manifest {repo}:{reference}: {}", resp.status());
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (media_type, digest) = (header("content-type"), header("docker-content-digest"));
        let bytes = resp.bytes().await?.to_vec();
        Ok(Some(Fetched {
            bytes,
            media_type,
            digest,
        }))
    }

    /// The blob `digest` of `repo`, checked against its digest.
    pub async fn blob(&self, repo: &str, digest: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &self.url(&format!("{repo}/blobs/{digest}")),
            )
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET blob {repo}@{digest}: {}", resp.status());
        }
        let bytes = resp.bytes().await?.to_vec();
        anyhow::ensure!(
            sha256_digest(&bytes) == digest,
            "blob {repo}@{digest} has other bytes"
        );
        Ok(bytes)
    }

    /// The status of `GET /v2/<repo>/referrers/<digest>` (404 on 2.8).
    pub async fn referrers_api_status(&self, repo: &str, digest: &str) -> anyhow::Result<u16> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &self.url(&format!("{repo}/referrers/{digest}")),
            )
            .header("Accept", OCI_INDEX)
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    /// The tags of `repo` (empty when it does not exist).
    pub async fn tags(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &self.url(&format!("{repo}/tags/list")),
            )
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let body: serde_json::Value =
            serde_json::from_slice(&resp.error_for_status()?.bytes().await?)?;
        let mut tags: Vec<String> = body["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        Ok(tags)
    }

    /// Uploads `bytes` as a blob of `repo` (skipped when it is there) and
    /// returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_digest(bytes);
        let head = self
            .request(
                reqwest::Method::HEAD,
                &self.url(&format!("{repo}/blobs/{digest}")),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(digest);
        }
        let start = self
            .request(
                reqwest::Method::POST,
                &self.url(&format!("{repo}/blobs/uploads/")),
            )
            .send()
            .await?;
        if start.status() != reqwest::StatusCode::ACCEPTED {
            bail!("starting a blob upload to {repo}: {}", start.status());
        }
        let location = start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("the upload has no Location")?
            .to_owned();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.host())
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .request(
                reqwest::Method::PUT,
                &format!("{location}{sep}digest={digest}"),
            )
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            bail!("uploading blob {digest} to {repo}: {}", put.status());
        }
        Ok(digest)
    }

    /// Puts `bytes` as the manifest `reference` of `repo` and returns the
    /// registry's `Docker-Content-Digest` (checked against the bytes').
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        let resp = self
            .request(
                reqwest::Method::PUT,
                &self.url(&format!("{repo}/manifests/{reference}")),
            )
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        let status = resp.status();
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if status != reqwest::StatusCode::CREATED {
            let body = resp.text().await.unwrap_or_default();
            bail!("PUT manifest {repo}:{reference}: {status}: {body}");
        }
        let own = sha256_digest(bytes);
        if digest != own {
            bail!("the registry says {digest} for a manifest whose sha256 is {own}");
        }
        Ok(digest)
    }

    /// Deletes the manifest `digest` of `repo` (every tag naming it goes).
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> anyhow::Result<()> {
        let resp = self
            .request(
                reqwest::Method::DELETE,
                &self.url(&format!("{repo}/manifests/{digest}")),
            )
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("DELETE manifest {repo}@{digest}: {}", resp.status());
        }
        Ok(())
    }
}

/// Writes the registry's configuration for `port` under `dir`.
fn write_config(dir: &Path, port: u16, auth: bool) -> anyhow::Result<PathBuf> {
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-tests\n",
        data = dir.join("data").display(),
    );
    if auth {
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n"))?;
        let _ = write!(
            config,
            "auth:\n  htpasswd:\n    realm: kiln-tests\n    path: {}\n",
            htpasswd.display()
        );
    }
    let path = dir.join("config.yml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Whether `child` is what listens on `port`: it still runs (a registry
/// that lost its port exits at once) and `/v2/` answers as a registry.
async fn answers_as_registry(http: &reqwest::Client, port: u16, child: &mut Child) -> bool {
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    if !matches!(child.try_wait(), Ok(None)) {
        return false;
    }
    http.get(format!("http://127.0.0.1:{port}/v2/"))
        .send()
        .await
        .is_ok_and(|r| r.headers().contains_key("docker-distribution-api-version"))
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Killing an ended child fails harmlessly; the group's drop kills
        // whatever is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// `Content-Type`.
    pub media_type: String,
    /// `Docker-Content-Digest`.
    pub digest: String,
}

impl Fetched {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes).unwrap_or(serde_json::Value::Null)
    }
}

/// What a `kiln publish` run left: its exit code, what it wrote to its
/// digest file (the publish pod's termination message) and its standard
/// error.
#[derive(Debug, Clone)]
pub struct PublishRun {
    pub code: Option<i32>,
    pub message: String,
    pub stderr: String,
}

/// Runs the real `kiln publish` (the binary of this build,
/// [`crate::binary::kiln_bin`]) with `args` (the publish pod's arguments,
/// `--digest-file` excepted: a file of ours is added) and `DOCKER_CONFIG`
/// set to `docker_config` (a directory with `config.json`; `None`: an empty
/// one, so the user's own is never read).
pub async fn run_publish(
    args: &[String],
    docker_config: Option<&Path>,
) -> anyhow::Result<PublishRun> {
    let scratch = std::env::temp_dir().join(format!(
        "kiln-publish-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    std::fs::create_dir_all(&scratch)?;
    let digest_file = scratch.join("termination-log");
    let config_dir =
        docker_config.map_or_else(|| scratch.join("no-docker-config"), Path::to_path_buf);
    let out = tokio::process::Command::new(crate::binary::kiln_bin())
        .arg("publish")
        .args(args)
        .arg(format!("--digest-file={}", digest_file.display()))
        .env("DOCKER_CONFIG", &config_dir)
        .env_remove("HOME")
        .output()
        .await
        .context("cannot run kiln publish")?;
    let message = std::fs::read_to_string(&digest_file).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(PublishRun {
        code: out.status.code(),
        message,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::chaos::history::body_hash(bytes))
}

/// `os/arch[/variant]` split into its parts.
pub fn split_platform(platform: &str) -> anyhow::Result<(&str, &str, Option<&str>)> {
    let mut parts = platform.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(os), Some(arch), variant, None) if !os.is_empty() && !arch.is_empty() => {
            Ok((os, arch, variant))
        }
        _ => bail!("platform {platform:?} is not os/arch[/variant]"),
    }
}

/// The per-platform tag a platform pod pushes to:
/// `<tag>-<os>-<arch>[-<variant>]`.
pub fn platform_tag(tag: &str, platform: &str) -> String {
    format!("{tag}-{}", platform.replace('/', "-"))
}

/// The manifest format of a synthetic image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// OCI image manifest (what Kaniko pushes by default).
    #[default]
    Oci,
    /// Docker image manifest v2 schema 2.
    Docker,
}

/// Pushes a tiny OCI image for `platform` (`os/arch[/variant]`: its config
/// says so) as `repo:tag` and returns its manifest digest, as a platform
/// pod would.
pub async fn push_synthetic_image(
    registry: &Registry,
    repo: &str,
    tag: &str,
    platform: &str,
) -> anyhow::Result<String> {
    push_synthetic_image_as(registry, repo, tag, platform, Format::Oci).await
}

/// [`push_synthetic_image`] in the given manifest format.
pub async fn push_synthetic_image_as(
    registry: &Registry,
    repo: &str,
    tag: &str,
    platform: &str,
    format: Format,
) -> anyhow::Result<String> {
    let (os, arch, variant) = split_platform(platform)?;
    let mut config = serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&[0u8; 1024])] },
    });
    if let Some(v) = variant {
        config["variant"] = v.into();
    }
    let config = serde_json::to_vec(&config)?;
    let config_digest = registry.push_blob(repo, &config).await?;
    let layer_digest = registry.push_blob(repo, &LAYER_GZ).await?;
    let (manifest_type, config_type, layer_type) = match format {
        Format::Oci => (
            OCI_MANIFEST,
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        Format::Docker => (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": { "mediaType": config_type, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": layer_type, "digest": layer_digest, "size": LAYER_GZ.len() }],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    registry
        .push_manifest(repo, tag, manifest_type, &manifest)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_split_and_tag() {
        assert_eq!(
            split_platform("linux/arm64/v8").expect("valid"),
            ("linux", "arm64", Some("v8"))
        );
        assert_eq!(
            split_platform("linux/amd64").expect("valid"),
            ("linux", "amd64", None)
        );
        assert!(split_platform("linux").is_err());
        assert!(split_platform("a/b/c/d").is_err());
        assert_eq!(platform_tag("1.0", "linux/arm/v7"), "1.0-linux-arm-v7");
    }

    #[test]
    fn the_layer_is_an_empty_tar_gzipped() {
        // The gzip trailer's size field (little-endian, last four bytes) is
        // the uncompressed size: two 512-byte zero blocks.
        let n = u32::from_le_bytes([LAYER_GZ[25], LAYER_GZ[26], LAYER_GZ[27], LAYER_GZ[28]]);
        assert_eq!(n, 1024);
    }
}
