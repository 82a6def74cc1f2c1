//! Finding the member program, `hedge-demo`, for the chaos runs.
//!
//! `HEDGE_CHAOS_MEMBER_BIN` names it when set. Otherwise it is the `hedge-demo` next to the
//! running executable in cargo's target directory (`target/<profile>/`, the parent of a test's
//! `deps/`), brought up to date first with `cargo build -p hedge-demo` in the same profile, so a
//! test never runs a stale member (the build is a no-op when `cargo test --workspace` has just
//! built it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::timeout;

/// The variable that names the member program.
pub const ENV_MEMBER_BIN: &str = "HEDGE_CHAOS_MEMBER_BIN";

/// How long building the member may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Why the member program cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The running executable's path is unknown.
    #[error("cannot tell where the running executable is: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// Building it failed.
    #[error("`cargo build -p hedge-demo` failed ({0}); set {ENV_MEMBER_BIN} to a built hedge-demo")]
    Build(String),
    /// It is not where it should be.
    #[error("no member program at {0}; set {ENV_MEMBER_BIN} to a built hedge-demo")]
    Missing(PathBuf),
}

/// The member program: `HEDGE_CHAOS_MEMBER_BIN`, or `hedge-demo` built next to this executable.
pub async fn member_program() -> Result<PathBuf, ProgramError> {
    if let Some(path) = std::env::var_os(ENV_MEMBER_BIN).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ProgramError::Missing(path))
        };
    }
    let exe = std::env::current_exe().map_err(ProgramError::CurrentExe)?;
    let dir = profile_dir(&exe);
    let release = dir.file_name().is_some_and(|n| n == "release");
    build(release).await?;
    let program = dir.join("hedge-demo");
    if program.is_file() {
        Ok(program)
    } else {
        Err(ProgramError::Missing(program))
    }
}

/// `target/<profile>/` from an executable in it or in its `deps/`.
fn profile_dir(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

async fn build(release: bool) -> Result<(), ProgramError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--quiet",
            "-p",
            "hedge-demo",
            "--bin",
            "hedge-demo",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if release {
        command.arg("--release");
    }
    let output = match timeout(BUILD_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(ProgramError::Build(e.to_string())),
        Err(_) => {
            return Err(ProgramError::Build(format!(
                "not done in {BUILD_TIMEOUT:?}"
            )));
        }
    };
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        Err(ProgramError::Build(
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_directory_is_above_deps() {
        assert_eq!(
            profile_dir(Path::new("/t/target/debug/deps/chaos-123")),
            PathBuf::from("/t/target/debug")
        );
        assert_eq!(
            profile_dir(Path::new("/t/target/release/hedge-bench")),
            PathBuf::from("/t/target/release")
        );
    }
}
