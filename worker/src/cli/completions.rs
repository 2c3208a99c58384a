//! `kiln completions SHELL`: shell completion scripts.

use clap_complete::Shell;

use super::exit;

pub const AFTER_HELP: &str = "\
Examples:
  kiln completions bash > /etc/bash_completion.d/kiln
  kiln completions zsh > \"${fpath[1]}/_kiln\"
  kiln completions fish > ~/.config/fish/completions/kiln.fish";

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: &CompletionsArgs, command: fn() -> clap::Command) -> anyhow::Result<u8> {
    let mut cmd = command();
    let name = cmd.get_name().to_owned();
    // Into a buffer first: `generate` panics when its writer fails (a
    // closed pipe); the buffer is then written with the usual handling.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut script);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
    Ok(exit::OK)
}
