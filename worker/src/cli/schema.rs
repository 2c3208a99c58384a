//! `kiln schema request|cancel|event`: the JSON Schemas of the wire types.

use super::exit;
use super::output::Output;

pub const AFTER_HELP: &str = "\
The schemas (JSON Schema draft 2020-12) are generated from the same Rust
types the worker decodes with, so they cannot drift from it.

Examples:
  kiln schema request > build-request.schema.json
  kiln schema event | jq '.properties.data'
  kiln schema request --output yaml";

/// Which schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// `BuildRequest` (routing key `build`).
    Request,
    /// `CancelRequest` (routing key `cancel`).
    Cancel,
    /// The CloudEvents Kiln publishes on `<prefix>.events`.
    Event,
}

#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// Which message.
    #[arg(value_enum)]
    pub which: Which,
    /// `json` (indented; also for `text`) or `yaml`.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(args: &SchemaArgs) -> anyhow::Result<u8> {
    let schema = match args.which {
        Which::Request => kiln_protocol::build_request_schema(),
        Which::Cancel => kiln_protocol::cancel_request_schema(),
        Which::Event => kiln_protocol::build_event_schema(),
    };
    match args.output {
        Output::Text | Output::Json => outln!("{}", serde_json::to_string_pretty(&schema)?),
        Output::Yaml => Output::Yaml.print(&schema)?,
    }
    Ok(exit::OK)
}
