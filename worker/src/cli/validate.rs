//! `kiln validate FILE…`: checks request files without a broker.

use std::io::Write as _;

use serde::Serialize;

use super::exit;
use super::input::{Request, Source, print_problems};
use super::output::Output;

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
    /// `text`: `FILE: PATH: REASON` lines; `json`/`yaml`: one document per
    /// file (`file`, `valid`, `kind`, `id`, `problems`).
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// One file's verdict, for `--output json|yaml`.
#[derive(Debug, Serialize)]
struct Verdict<'a> {
    file: &'a str,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
struct Problem {
    path: String,
    reason: String,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    let mut invalid = 0usize;
    for path in &args.files {
        let source = match Source::read(path) {
            Ok(s) => s,
            Err(e) => {
                invalid += 1;
                let reason = super::one_line(&e);
                if args.output.is_data() {
                    let problems = vec![Problem {
                        path: "$".into(),
                        reason,
                    }];
                    let v = Verdict {
                        file: path,
                        valid: false,
                        kind: None,
                        id: None,
                        problems,
                    };
                    print_doc(&mut out, args.output, &v)?;
                } else {
                    writeln!(out, "{path}: $: {reason}")?;
                }
                continue;
            }
        };
        let decoded = source.decode().and_then(|doc| doc.request());
        if args.output.is_data() {
            let v = match &decoded {
                Ok(request) => {
                    let (kind, id) = match request {
                        Request::Build(r) => ("BuildRequest", &r.id),
                        Request::Cancel(c) => ("CancelRequest", &c.id),
                    };
                    Verdict {
                        file: &source.name,
                        valid: true,
                        kind: Some(kind),
                        id: Some(id.clone()),
                        problems: Vec::new(),
                    }
                }
                Err(errs) => Verdict {
                    file: &source.name,
                    valid: false,
                    kind: None,
                    id: None,
                    problems: errs
                        .iter()
                        .map(|e| Problem {
                            path: e.path.clone(),
                            reason: super::fold(&e.reason),
                        })
                        .collect(),
                },
            };
            invalid += usize::from(!v.valid);
            if !(args.quiet && v.valid) {
                print_doc(&mut out, args.output, &v)?;
            }
            continue;
        }
        match decoded {
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
        errln!(
            "kiln: {invalid} of {} file{} invalid",
            args.files.len(),
            if args.files.len() == 1 { "" } else { "s" }
        );
        return Ok(exit::INVALID);
    }
    Ok(exit::OK)
}

/// One `--output json|yaml` document on `out` (errors, such as a closed
/// pipe, go back to `main`).
fn print_doc(out: &mut impl std::io::Write, output: Output, v: &Verdict<'_>) -> anyhow::Result<()> {
    if let Some(doc) = output.document(v)? {
        writeln!(out, "{doc}")?;
    }
    Ok(())
}
