//! `kiln validate FILE…`: checks request files without a broker.

use std::io::Write;

use kiln_protocol::ValidationError;
use serde::Serialize;

use super::exit;
use super::input::{Request, Source, print_problems};
use super::output::Output;

pub const AFTER_HELP: &str = "\
Each file is a BuildRequest or a CancelRequest (by its `kind`), in JSON or
YAML (by extension; otherwise `{` starts JSON). Every problem is printed as
`FILE: PATH: REASON`; the exit code is 2 when any file is invalid. A build
arg whose name looks secret (TOKEN, PASSWORD, SECRET, API_KEY, AUTH, …) gets
a warning on standard error (`warnings` with `--output json|yaml`): its
value is in clear in the pod spec; `secrets` is the way to pass a secret.

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
    /// file (`file`, `valid`, `kind`, `id`, `problems`, `warnings`).
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
    /// Not refusals: build args whose names look secret.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<Problem>,
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
        let valid = match Source::read(path) {
            Ok(source) => check(&mut out, args, &source)?,
            Err(e) => {
                print_unreadable(&mut out, args.output, path, super::one_line(&e))?;
                false
            }
        };
        invalid += usize::from(!valid);
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

/// A file that cannot be read: one problem at `$`, printed even with
/// `--quiet` (it is invalid).
fn print_unreadable(
    out: &mut impl Write,
    output: Output,
    path: &str,
    reason: String,
) -> anyhow::Result<()> {
    if !output.is_data() {
        writeln!(out, "{path}: $: {reason}")?;
        return Ok(());
    }
    let v = Verdict {
        file: path,
        valid: false,
        kind: None,
        id: None,
        problems: vec![Problem {
            path: "$".into(),
            reason,
        }],
        warnings: Vec::new(),
    };
    print_doc(out, output, &v)
}

/// Decodes and validates one file read, prints its verdict (nothing for a
/// valid file with `--quiet`) and says whether it is valid.
fn check(out: &mut impl Write, args: &ValidateArgs, source: &Source) -> anyhow::Result<bool> {
    let decoded = source.decode().and_then(|doc| doc.request());
    if args.output.is_data() {
        let v = verdict(&source.name, &decoded);
        if !(args.quiet && v.valid) {
            print_doc(out, args.output, &v)?;
        }
        return Ok(v.valid);
    }
    match decoded {
        Ok(request) => {
            if !args.quiet {
                writeln!(out, "{}: ok ({})", source.name, summary(&request))?;
            }
            for w in warnings(&request) {
                errln!("kiln: warning: {}: {}: {}", source.name, w.path, w.reason);
            }
            Ok(true)
        }
        Err(errs) => {
            print_problems(out, &source.name, &errs)?;
            Ok(false)
        }
    }
}

/// The `--output json|yaml` document of a file read.
fn verdict<'a>(file: &'a str, decoded: &Result<Request, Vec<ValidationError>>) -> Verdict<'a> {
    match decoded {
        Ok(request) => {
            let (kind, id) = match request {
                Request::Build(r) => ("BuildRequest", &r.id),
                Request::Cancel(c) => ("CancelRequest", &c.id),
            };
            Verdict {
                file,
                valid: true,
                kind: Some(kind),
                id: Some(id.clone()),
                problems: Vec::new(),
                warnings: warnings(request)
                    .into_iter()
                    .map(|w| Problem {
                        path: w.path,
                        reason: w.reason,
                    })
                    .collect(),
            }
        }
        Err(errs) => Verdict {
            file,
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
            warnings: Vec::new(),
        },
    }
}

/// What a valid request is warned about (build args whose names look
/// secret: their values are in clear in the pod spec); never a refusal.
fn warnings(request: &Request) -> Vec<ValidationError> {
    match request {
        Request::Build(r) => r.warnings(),
        Request::Cancel(_) => Vec::new(),
    }
}

/// What a valid file holds, in the words of the `ok (…)` line.
fn summary(request: &Request) -> String {
    match request {
        Request::Build(r) => format!(
            "BuildRequest {:?}, {} image{}",
            r.id,
            r.images.len(),
            if r.images.len() == 1 { "" } else { "s" }
        ),
        Request::Cancel(c) => format!("CancelRequest for build {:?}", c.id),
    }
}

/// One `--output json|yaml` document on `out` (errors, such as a closed
/// pipe, go back to `main`).
fn print_doc(out: &mut impl Write, output: Output, v: &Verdict<'_>) -> anyhow::Result<()> {
    if let Some(doc) = output.document(v)? {
        writeln!(out, "{doc}")?;
    }
    Ok(())
}
