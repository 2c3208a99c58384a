//! `kiln validate FILE…`: checks request files without a broker.

use std::io::Write as _;

use super::exit;
use super::input::{Request, Source, print_problems};

pub const AFTER_HELP: &str = "\
Each file is a BuildRequest or a CancelRequest (by its `kind`), in JSON or
YAML (by extension; otherwise `{` starts JSON). Every problem is printed as
`FILE: PATH: REASON`; the exit code is 2 when any file is invalid.

Examples:
  kiln validate examples/*.json
  kiln validate build.yaml
  generate-request | kiln validate -";

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Request files (JSON or YAML); `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
    /// Print only problems, nothing for valid files.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    let mut invalid = 0usize;
    for path in &args.files {
        let source = match Source::read(path) {
            Ok(s) => s,
            Err(e) => {
                invalid += 1;
                writeln!(out, "{path}: $: {}", super::one_line(&e))?;
                continue;
            }
        };
        match source.decode().and_then(|doc| doc.request()) {
            Ok(request) => {
                if !args.quiet {
                    let what = match &request {
                        Request::Build(r) => format!(
                            "BuildRequest {:?}, {} image{}",
                            r.id,
                            r.images.len(),
                            if r.images.len() == 1 { "" } else { "s" }
                        ),
                        Request::Cancel(c) => format!("CancelRequest for build {:?}", c.id),
                    };
                    writeln!(out, "{}: ok ({what})", source.name)?;
                }
            }
            Err(errs) => {
                invalid += 1;
                print_problems(&mut out, &source.name, &errs)?;
            }
        }
    }
    if invalid > 0 {
        out.flush()?;
        eprintln!(
            "kiln: {invalid} of {} file{} invalid",
            args.files.len(),
            if args.files.len() == 1 { "" } else { "s" }
        );
        return Ok(exit::INVALID);
    }
    Ok(exit::OK)
}
