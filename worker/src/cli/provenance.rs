//! `kiln provenance BUILD [IMAGE]`: the signed provenance of a build's
//! images, from its Redis record, as the `image.succeeded` events carried it.

use anyhow::anyhow;

use super::exit;
use crate::config::Connections;

pub const AFTER_HELP: &str = "\
Prints the DSSE envelope of each succeeded image, one JSON document per line
(in image name order; only IMAGE's with one given), ready for `kiln verify`.
An image without one (not succeeded, or the worker signs nothing: no
KILN_PROVENANCE_KEY) is named on standard error, exit code 1. Records live
for KILN_RECORD_TTL of the workers (24h by default).

Examples:
  kiln provenance shop-cart-1.2.3-7f3a api > api.intoto.json
  kiln provenance shop-cart-1.2.3-7f3a api | kiln verify --key kiln.pub.pem -";

#[derive(Debug, clap::Args)]
pub struct ProvenanceArgs {
    /// The build id.
    pub id: String,
    /// One image of the build; all of them without.
    pub image: Option<String>,
    #[command(flatten)]
    pub connections: Connections,
}

pub async fn run(args: ProvenanceArgs) -> anyhow::Result<u8> {
    let leases = super::connect_redis(&args.connections).await?;
    let record = leases.record(&args.id).await?.ok_or_else(|| {
        anyhow!(
            "no record of build {} in Redis (unknown, or older than the workers' KILN_RECORD_TTL)",
            args.id
        )
    })?;
    let images = &record.history.images;
    let names: Vec<&String> = match &args.image {
        Some(name) if images.contains_key(name) => vec![name],
        Some(name) => {
            let known: Vec<&str> = images.keys().map(String::as_str).collect();
            return Err(anyhow!(
                "build {} has no image {name} (its images: {})",
                args.id,
                known.join(", ")
            ));
        }
        None => images.keys().collect(),
    };
    let mut code = exit::OK;
    for name in names {
        if let Some(envelope) = &images[name].provenance {
            outln!("{}", serde_json::to_string(envelope)?);
        } else {
            errln!("kiln: {}/{name}: no signed provenance", args.id);
            code = exit::FAILED;
        }
    }
    Ok(code)
}
