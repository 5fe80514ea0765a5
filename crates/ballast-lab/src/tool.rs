//! The system tools the lab drives — `ip` for namespaces and links, `nft` for dropped packets,
//! `tc` for delays — run as commands, as an operator would run them, with their own error
//! messages kept: they say best what the kernel refused.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `program ARGS`, returning its standard output; a failure names the command and carries
/// what it printed on standard error.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

/// [`run`], writing `input` to its standard input (an `nft -f -` script).
pub(crate) fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut command = Command::new(path(program));
    command
        .args(args)
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let line = format!("{program} {}", args.join(" "));
    let mut child = command
        .spawn()
        .with_context(|| format!("running `{line}` (is {program} installed?)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing to `{line}`"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("running `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Where Debian puts `ip`, `nft` and `tc`, which a user's `PATH` may leave out.
const SBIN: &[&str] = &["/usr/sbin", "/sbin"];

/// Where `program` is: on the `PATH` or in an sbin directory (or its bare name, for the error
/// of running it to say it is missing).
pub(crate) fn path(program: &str) -> std::path::PathBuf {
    ballast_bench::find_program(program, SBIN).unwrap_or_else(|| program.into())
}

/// Whether `program` can be run (on the `PATH` or in an sbin directory).
pub(crate) fn installed(program: &str) -> bool {
    ballast_bench::find_program(program, SBIN).is_some()
}
