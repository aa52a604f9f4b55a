//! Temporary directories, one per test, removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh, empty directory under the system temp dir: `vamp-<tag>-<pid>-<n>`, removed when
/// dropped (or kept, see [`TempDir::kept_on_failure`]).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    /// Keep the directory when the test fails or this variable is `1`.
    keep_var: Option<&'static str>,
}

impl TempDir {
    /// A new directory named after `tag`; panics if it cannot be made.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vamp-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir {
            path,
            keep_var: None,
        }
    }

    /// A new directory that is kept, and its path printed, when the test panics or the
    /// environment variable `keep_var` is `1`: for logs and consoles worth reading after a
    /// failure.
    pub fn kept_on_failure(tag: &str, keep_var: &'static str) -> TempDir {
        let mut dir = TempDir::new(tag);
        dir.keep_var = Some(keep_var);
        dir
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` in the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(var) = self.keep_var
            && (std::thread::panicking() || std::env::var(var).as_deref() == Ok("1"))
        {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dir_is_new_and_gone_after_drop() {
        let (a, b) = (TempDir::new("support"), TempDir::new("support"));
        assert_ne!(a.path(), b.path());
        std::fs::write(a.join("f"), b"x").unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
        assert!(b.path().is_dir());
    }
}
