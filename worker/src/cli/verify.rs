//! `kiln verify --key PUB.pem FILE|-`: checks a provenance envelope, or an
//! `image.succeeded` event carrying one, against the worker's public key.

use anyhow::Context as _;
use kiln_protocol::provenance::{VerifyingKey, verify_document};
use serde_json::json;

use super::exit;
use super::input::Source;
use super::output::Output;

pub const AFTER_HELP: &str = "\
FILE holds one JSON document: a DSSE envelope (what `kiln provenance`
prints) or a whole CloudEvent whose `data.provenance` is one. The envelope
must be signed by KEY and hold an in-toto Statement v1 with SLSA Provenance
v1; for an event, every subject must also carry the event's `data.digest`.
The subjects (destination and digest) are printed on standard output, one
per line; why verification failed goes to standard error, exit code 1.

KEY is the worker's public key (`openssl pkey -pubout -in worker-key.pem`);
a private key file works too (its public half is used).

Examples:
  kiln verify --key kiln-provenance.pub.pem envelope.json
  kiln watch --output json BUILD | grep image.succeeded | head -1 | kiln verify --key pub.pem -";

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// PEM file of the public key (`PUBLIC KEY`) the envelope must be signed with.
    #[arg(long, value_name = "PUB.pem")]
    pub key: String,
    /// The envelope or event (JSON); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: String,
    /// `text`: `NAME sha256:HEX` per subject; `json`/`yaml`: `keyid`,
    /// `builder`, `invocationId`, `subjects`.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<u8> {
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("--key: cannot read {}", args.key))?;
    let key = VerifyingKey::from_pem(&pem).with_context(|| format!("--key {}", args.key))?;
    let source = Source::read(&args.file)?;
    let statement = match verify_document(&key, &source.bytes) {
        Ok(statement) => statement,
        Err(e) => {
            errln!("kiln: {}: not verified: {e}", source.name);
            return Ok(exit::FAILED);
        }
    };
    let subjects: Vec<(String, String)> = statement
        .subject
        .iter()
        .map(|s| {
            let name = s.name.clone().or_else(|| s.uri.clone()).unwrap_or_default();
            let digest = s.digest_of("sha256").unwrap_or_default();
            (name, format!("sha256:{digest}"))
        })
        .collect();
    if args.output == Output::Text {
        for (name, digest) in &subjects {
            outln!("{name} {digest}");
        }
        errln!("kiln: {}: verified, signed by {}", source.name, key.keyid());
    } else {
        let run = &statement.predicate.run_details;
        args.output.print(&json!({
            "file": source.name,
            "keyid": key.keyid(),
            "builder": run.builder.id,
            "invocationId": run.metadata.invocation_id,
            "subjects": subjects
                .iter()
                .map(|(name, digest)| json!({"name": name, "digest": digest}))
                .collect::<Vec<_>>(),
        }))?;
    }
    Ok(exit::OK)
}
