//! The tenant's registry credentials: the docker config that the registry
//! Secret holds (`config.json` under `DOCKER_CONFIG`, mounted as for the
//! Kaniko pod), read with `docker_credential` (auths with `auth` or
//! `username`/`password`, identity tokens, credential helpers).

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

use super::error::PublishError;

/// The docker config, read once.
#[derive(Debug, Clone, Default)]
pub(super) struct DockerConfig {
    /// `None`: there is no config file, every registry is anonymous.
    file: Option<(PathBuf, Vec<u8>)>,
}

impl DockerConfig {
    /// Reads `<dir>/config.json` (`dir`: `DOCKER_CONFIG`, else
    /// `~/.docker`). A missing file means anonymous access; a file that
    /// cannot be read is an error.
    pub(super) fn load(dir: Option<&Path>) -> Result<Self, PublishError> {
        let Some(dir) = dir else {
            return Ok(Self::default());
        };
        let path = dir.join("config.json");
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Self {
                file: Some((path, bytes)),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(PublishError::invalid(format!(
                "the docker config {} cannot be read: {e}",
                path.display()
            ))),
        }
    }

    /// The directory of `DOCKER_CONFIG`, else `$HOME/.docker`.
    pub(super) fn default_dir() -> Option<PathBuf> {
        std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
    }

    /// The credentials for `registry` (`host[:port]`; Docker Hub's names are
    /// normalised by the reader), anonymous when the config has none.
    pub(super) fn auth_for(&self, registry: &str) -> Result<RegistryAuth, PublishError> {
        let Some((path, bytes)) = &self.file else {
            return Ok(RegistryAuth::Anonymous);
        };
        match docker_credential::get_credential_from_reader(bytes.as_slice(), registry) {
            Ok(DockerCredential::UsernamePassword(user, password)) => {
                Ok(RegistryAuth::Basic(user, password))
            }
            Ok(DockerCredential::IdentityToken(token)) => Ok(RegistryAuth::Bearer(token)),
            Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(RegistryAuth::Anonymous),
            // The error's text names no secret (a helper's output is not
            // shown: it is replaced by the helper's name).
            Err(CredentialRetrievalError::HelperFailure { helper, .. }) => {
                Err(PublishError::invalid(format!(
                    "the docker config {} names credential helper {helper:?} for {registry}, which failed",
                    path.display()
                )))
            }
            Err(e) => Err(PublishError::invalid(format!(
                "the docker config {} gives no usable credentials for {registry}: {e}",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> DockerConfig {
        DockerConfig {
            file: Some((
                PathBuf::from("/kaniko/.docker/config.json"),
                json.as_bytes().to_vec(),
            )),
        }
    }

    #[test]
    fn auths_give_basic_credentials_and_others_are_anonymous() {
        // "kiln:s3cret"
        let c = config(r#"{"auths":{"127.0.0.1:5000":{"auth":"a2lsbjpzM2NyZXQ="}}}"#);
        assert!(matches!(
            c.auth_for("127.0.0.1:5000"),
            Ok(RegistryAuth::Basic(u, p)) if u == "kiln" && p == "s3cret"
        ));
        assert!(matches!(c.auth_for("ghcr.io"), Ok(RegistryAuth::Anonymous)));
        assert!(matches!(
            DockerConfig::default().auth_for("ghcr.io"),
            Ok(RegistryAuth::Anonymous)
        ));
    }

    #[test]
    fn a_broken_config_is_invalid_and_names_the_file_not_the_secret() {
        let err = config("{not json").auth_for("ghcr.io").expect_err("broken");
        assert_eq!(err.class, kiln_core::classify::PublishClass::Invalid);
        assert!(
            err.detail.contains("/kaniko/.docker/config.json"),
            "{}",
            err.detail
        );
        let err = config(r#"{"auths":{"ghcr.io":{"auth":"!!!"}}}"#)
            .auth_for("ghcr.io")
            .expect_err("undecodable");
        assert!(!err.detail.contains("!!!"), "{}", err.detail);
    }

    #[test]
    fn a_missing_file_is_anonymous() {
        let dir =
            std::env::temp_dir().join(format!("kiln-no-docker-config-{}", std::process::id()));
        let c = DockerConfig::load(Some(&dir)).expect("missing is fine");
        assert!(matches!(c.auth_for("ghcr.io"), Ok(RegistryAuth::Anonymous)));
    }
}
