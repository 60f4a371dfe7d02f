//! Writing results so that nothing is lost or half-written.
//!
//! - Every file is written in full to a temporary file beside its destination, flushed to the
//!   disk (`sync_all`) with every error checked, and only then published.
//! - Publishing does not replace unless asked: a file is hard-linked into place (which fails if
//!   the name exists, so of two runs writing one output the second reports "exists" instead of
//!   silently replacing the first's), and a folder is published by creating its final name
//!   first (atomic, fails if it exists) and renaming the finished folder onto it.
//! - Temporary files and folders are [`Partial`]s: removed when dropped unless published, and
//!   removed by the handler [`remove_partials_on_signal`] installs for Ctrl-C, SIGTERM and
//!   SIGHUP, so an interrupted run leaves nothing behind (a bundle's partial folder can be
//!   gigabytes).
//! - [`check_writable`] proves an output folder can be written before minutes of compute.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

/// Temporary paths that exist now, for the signal handler.
static PARTIALS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A temporary file or folder that is removed unless it is published.
pub struct Partial {
    path: PathBuf,
    armed: bool,
}

impl Partial {
    /// A fresh temporary name beside `destination` (same folder, so publishing is a rename or
    /// a link on one file system), registered for removal. Nothing is created yet.
    pub fn beside(destination: &Path) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = destination
            .file_name()
            .map_or("output".into(), |n| n.to_string_lossy());
        let path = parent_dir(destination).join(format!(
            ".{name}.partial-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        if let Ok(mut list) = PARTIALS.lock() {
            list.push(path.clone());
        }
        Self { path, armed: true }
    }

    /// The temporary path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Forgets the path (it has been published under its final name).
    fn disarm(&mut self) {
        self.armed = false;
        if let Ok(mut list) = PARTIALS.lock() {
            list.retain(|p| p != &self.path);
        }
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.armed {
            remove(&self.path);
            self.disarm();
        }
    }
}

fn remove(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes every [`Partial`] and exits with status 130 on Ctrl-C, SIGTERM or SIGHUP.
pub fn remove_partials_on_signal() {
    // Fails only if a handler is already set (never in this program): nothing to do then.
    let _ = ctrlc::set_handler(|| {
        let list = match PARTIALS.lock() {
            Ok(list) => list.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for p in &list {
            remove(p);
        }
        if list.is_empty() {
            eprintln!("\ninterrupted");
        } else {
            eprintln!("\ninterrupted: removed {} unfinished output(s)", list.len());
        }
        std::process::exit(130);
    });
}

/// The folder a path is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `path` (which must not exist) with `bytes` and flushes it to the disk.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    write_synced(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Flushes a folder's entries (new names) to the disk where the system allows it.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Writes `bytes` to `path` through a flushed temporary file; without `overwrite`, refuses
/// (and leaves untouched) a file that exists, even one another process made meanwhile.
pub fn publish_file(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = Partial::beside(path);
    // Errors name the destination, not the temporary file.
    write_synced(tmp.path(), bytes).with_context(|| format!("writing {}", path.display()))?;
    let exists = || anyhow::anyhow!("{}: exists (use --overwrite)", path.display());
    if overwrite {
        std::fs::rename(tmp.path(), path)
            .with_context(|| format!("renaming to {}", path.display()))?;
        tmp.disarm();
    } else {
        match std::fs::hard_link(tmp.path(), path) {
            Ok(()) => {} // the temporary name is removed when `tmp` drops
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
            // File systems without hard links (FAT, some network shares): check, then
            // rename — a narrow window instead of none.
            Err(_) => {
                if path.exists() {
                    return Err(exists());
                }
                std::fs::rename(tmp.path(), path)
                    .with_context(|| format!("renaming to {}", path.display()))?;
                tmp.disarm();
            }
        }
    }
    sync_dir(&dir);
    Ok(())
}

/// Publishes a finished temporary folder as `path`, which must not exist: the name is taken
/// first with an atomic `create_dir`, then the folder is renamed onto it.
pub fn publish_dir(mut tmp: Partial, path: &Path) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{}: exists (another run made it meanwhile)", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    // Windows cannot rename onto a folder, even an empty one.
    #[cfg(windows)]
    let _ = std::fs::remove_dir(path);
    if let Err(e) = std::fs::rename(tmp.path(), path) {
        let _ = std::fs::remove_dir(path);
        return Err(e).with_context(|| format!("moving the result to {}", path.display()));
    }
    tmp.disarm();
    sync_dir(&parent_dir(path));
    Ok(())
}

/// Checks a folder output before any work: it must not exist, and its parent must exist and
/// be writable (the folder is assembled beside it and published whole, [`publish_dir`]).
pub fn check_new_dir(path: &Path) -> Result<()> {
    if path.exists() {
        bail!(
            "{}: already exists; choose a new output folder",
            path.display()
        );
    }
    let parent = parent_dir(path);
    if !parent.is_dir() {
        bail!(
            "{}: the output's parent folder does not exist",
            parent.display()
        );
    }
    check_writable(&parent)
}

/// Makes `dir` if needed and proves a file can be created in it.
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let probe = Partial::beside(&dir.join("write-test"));
    write_synced(probe.path(), b"")
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgp-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn publishes_without_replacing_and_leaves_no_temporaries() {
        let d = scratch("file");
        let out = d.join("a.png");
        publish_file(&out, b"first", false).unwrap();
        let err = publish_file(&out, b"second", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"first");
        publish_file(&out, b"third", true).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"third");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.png")]);
        assert!(PARTIALS.lock().unwrap().iter().all(|p| !p.starts_with(&d)));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn publishes_a_folder_once() {
        let d = scratch("dir");
        let out = d.join("b.bundle");
        for round in 0..2 {
            let tmp = Partial::beside(&out);
            std::fs::create_dir(tmp.path()).unwrap();
            write_new(&tmp.path().join("x"), b"x").unwrap();
            let result = publish_dir(tmp, &out);
            assert_eq!(result.is_ok(), round == 0, "{result:?}");
        }
        assert_eq!(std::fs::read(out.join("x")).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(d).unwrap();
    }
}
