//! Shell completions and man pages generated from a binary's clap definition,
//! so the documentation a package installs never drifts from the real flags.
//! `ceres-vps`, `ceres-home` and `cerectl` each expose them as `completions`
//! and `man` subcommands.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::CommandFactory;

/// `completions` arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man` arguments.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write the main page and one page per subcommand (NAME-SUBCOMMAND.1)
    /// here instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Writes the completion script of `C` for `shell`.
pub fn write_completions<C: CommandFactory>(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut command = C::command();
    let name = command.get_name().to_owned();
    clap_complete::generate(shell, &mut command, name, out);
}

/// Writes the man page of `C` (roff).
pub fn write_man<C: CommandFactory>(out: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(C::command()).render(out)
}

/// Runs the `completions` subcommand: the script on standard output.
pub fn completions<C: CommandFactory>(args: &CompletionsArgs) {
    write_completions::<C>(args.shell, &mut io::stdout().lock());
}

/// Runs the `man` subcommand: the main page on standard output, or every page
/// into `--out-dir` (created if missing). An error names the directory. A
/// reader that stops early (`| head`) is not an error.
pub fn man<C: CommandFactory>(args: &ManArgs) -> io::Result<()> {
    match &args.out_dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(C::command(), dir))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("writing man pages to {}: {e}", dir.display()),
                )
            }),
        None => {
            let mut page = Vec::new();
            write_man::<C>(&mut page)?;
            match io::stdout().lock().write_all(&page) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                other => other,
            }
        }
    }
}

/// For the binaries' tests: the clap definition of `C` is consistent, and its
/// completion scripts (bash, zsh, fish) and man page name every one of
/// `subcommands`. Returns what is missing.
pub fn check_generated<C: CommandFactory>(subcommands: &[&str]) -> Result<(), String> {
    C::command().debug_assert();
    let name = C::command().get_name().to_owned();
    let mut missing = Vec::new();
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let mut out = Vec::new();
        write_completions::<C>(shell, &mut out);
        let text = String::from_utf8_lossy(&out);
        missing.extend(
            subcommands
                .iter()
                .filter(|sub| !text.contains(**sub))
                .map(|sub| format!("{sub} in the {shell} completions")),
        );
    }
    let mut out = Vec::new();
    write_man::<C>(&mut out).map_err(|e| format!("rendering the man page: {e}"))?;
    let page = String::from_utf8_lossy(&out);
    if !page.contains(&format!(".TH {name}")) {
        missing.push(format!("the .TH {name} title line of the man page"));
    }
    // roff escapes the hyphen.
    missing.extend(
        subcommands
            .iter()
            .filter(|sub| !page.contains(&sub.replace('-', "\\-")))
            .map(|sub| format!("{sub} in the man page")),
    );
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{name}: missing {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny CLI standing in for the real ones.
    #[derive(Debug, clap::Parser)]
    #[command(name = "demo")]
    struct Demo {
        #[command(subcommand)]
        command: DemoCommand,
    }

    #[derive(Debug, clap::Subcommand)]
    enum DemoCommand {
        /// Says hello.
        SayHello,
        /// Completions.
        Completions(CompletionsArgs),
        /// Man pages.
        Man(ManArgs),
    }

    #[test]
    fn generated_docs_name_the_subcommands() {
        check_generated::<Demo>(&["say-hello", "completions", "man"]).expect("complete docs");
    }

    #[test]
    fn a_missing_subcommand_is_reported() {
        let err = check_generated::<Demo>(&["say-goodbye"]).expect_err("must miss");
        assert!(err.contains("say-goodbye in the bash completions"), "{err}");
        assert!(err.contains("say-goodbye in the man page"), "{err}");
    }

    #[test]
    fn out_dir_gets_a_page_per_subcommand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("man1");
        man::<Demo>(&ManArgs {
            out_dir: Some(out.clone()),
        })
        .expect("man --out-dir");
        for page in ["demo.1", "demo-say-hello.1", "demo-man.1"] {
            assert!(out.join(page).exists(), "{page} missing");
        }
    }

    #[test]
    fn an_unwritable_out_dir_names_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let err = man::<Demo>(&ManArgs {
            out_dir: Some(file.join("sub")),
        })
        .expect_err("cannot write under a file");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
