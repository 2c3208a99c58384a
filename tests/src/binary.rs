//! The `kiln` binary the process tests run.
//!
//! It is found beside the test binary (`target/<profile>/kiln`, the test
//! itself being `target/<profile>/deps/<test>-…`), or at `$KILN_BIN`. Cargo
//! builds a package's binaries for its own integration tests only, so the
//! test command builds it first: `cargo build -p kiln-worker --bin kiln`
//! (scripts/test does). A missing binary fails with that advice; a binary
//! older than `worker/src` gets a warning.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The `kiln` binary of this build (`$KILN_BIN` overrides it).
#[allow(clippy::missing_panics_doc)]
pub fn kiln_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut dir = exe
        .parent()
        .expect("the test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("kiln{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p kiln-worker --bin kiln` \
         (scripts/test does), or point KILN_BIN at it",
        bin.display()
    );
    warn_if_stale(&bin);
    bin
}

fn warn_if_stale(bin: &Path) {
    fn newest(dir: &Path) -> Option<SystemTime> {
        let mut best = None;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            let t = if p.is_dir() {
                newest(&p)
            } else {
                e.metadata().and_then(|m| m.modified()).ok()
            };
            best = best.max(t);
        }
        best
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/src");
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(src)) = (built, newest(&src))
        && src > built
    {
        eprintln!(
            "warning: {} is older than worker/src; run `cargo build -p kiln-worker --bin kiln`",
            bin.display()
        );
    }
}
