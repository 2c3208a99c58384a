//! What a valid request is told but not refused for: build args whose names
//! look secret (their values are in clear in the pod spec and the plan
//! annotation; `secrets` is the way to pass a secret).

use super::types::BuildRequest;
use crate::validate::{ValidationError, field, index, key};

/// Words in a build-arg name that suggest its value is a secret (compared
/// case-insensitively, anywhere in the name).
const SECRET_WORDS: [&str; 9] = [
    "TOKEN",
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "APIKEY",
    "API_KEY",
    "CREDENTIAL",
    "PRIVATE_KEY",
    "AUTH",
];

/// Whether a build-arg name looks like it holds a secret (`NPM_TOKEN`,
/// `db_password`, `GithubAuth`): worth a warning, never a refusal.
pub fn build_arg_looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| n.contains(w))
}

impl BuildRequest {
    /// One warning per build arg whose name looks secret, at its path
    /// (`images[0].buildArgs.NPM_TOKEN`), saying why and what to use
    /// instead. Never the value.
    pub fn warnings(&self) -> Vec<ValidationError> {
        let mut out = Vec::new();
        for (i, image) in self.images.iter().enumerate() {
            let path = field(&index("images", i).to_string(), "buildArgs");
            for name in image
                .build_args
                .keys()
                .filter(|n| build_arg_looks_secret(n))
            {
                let id = name.to_ascii_lowercase();
                // Not `ValidationError::new`: the text holds no value to
                // mask, and the masker would garble its `"secret": …` example.
                out.push(ValidationError {
                    path: key(&path, name).to_string(),
                    reason: format!(
                        "{name} looks like a secret: build args are visible in clear in the build pod's spec and its kiln.dev/plan annotation to anyone who can read pods in the build namespace; pass it as a build secret instead (\"secrets\": {{\"{id}\": {{\"secret\": \"<Secret>\", \"key\": \"<key>\"}}}} and RUN --mount=type=secret,id={id} in the Dockerfile)"
                    ),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18 item 11: the names the warning is for, case-insensitive.
    #[test]
    fn secret_looking_build_arg_names() {
        for secret in [
            "NPM_TOKEN",
            "token",
            "DB_PASSWORD",
            "passwd",
            "client_secret",
            "ApiKey",
            "STRIPE_API_KEY",
            "AWS_CREDENTIALS",
            "SSH_PRIVATE_KEY",
            "GithubAuth",
            "BASIC_AUTH_HEADER",
        ] {
            assert!(build_arg_looks_secret(secret), "{secret}");
        }
        for plain in [
            "VERSION",
            "GO_VERSION",
            "KEYBOARD",
            "PATH",
            "BASE_IMAGE",
            "PUBLIC_KEY_ID",
        ] {
            assert!(!build_arg_looks_secret(plain), "{plain}");
        }
    }

    #[test]
    fn warnings_name_the_path_and_never_the_value() {
        let req: BuildRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "kiln/v1", "kind": "BuildRequest", "id": "w",
            "images": [{"name": "api", "context": {"url": "https://e.com/c.tgz"},
                "destinations": ["r.example.com/a:1"],
                "buildArgs": {"VERSION": "1", "NPM_TOKEN": "npm_abcdef123"}}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let w = req.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].path, "images[0].buildArgs.NPM_TOKEN");
        assert!(w[0].reason.contains("secrets"), "{}", w[0].reason);
        assert!(!w[0].reason.contains("npm_abcdef123"));
    }
}
