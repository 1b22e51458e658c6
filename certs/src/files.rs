//! Writing certificate material to disk without surprises.
//!
//! Invariants: a set of output files is checked as a whole before any of them is written, so a
//! refused `issue` leaves nothing behind; private keys are created with mode 0600 from the start
//! (never chmod-ed afterwards, so they are never briefly readable); files replaced under `force`
//! (and files other processes watch, like `crl.pem` and `issued.json`) are written to a temporary
//! file in the same directory and renamed into place, so a reader sees the old or the new file,
//! never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::CertError;

/// Mode for private keys.
pub(crate) const PRIVATE: u32 = 0o600;
/// Mode for certificates, CRLs and the ledger.
pub(crate) const PUBLIC: u32 = 0o644;

/// One file about to be written.
pub(crate) struct Output {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl Output {
    pub fn new(path: PathBuf, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        Output {
            path,
            contents: contents.into(),
            mode,
        }
    }
}

/// Creates `dir` (and parents) with `mode` for the directories this call creates.
pub(crate) fn create_dir(dir: &Path, mode: u32) -> Result<(), CertError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder.create(dir).map_err(|e| CertError::io(dir, e))
}

/// Writes all `outputs`, refusing (before writing anything) if one exists and `force` is false.
///
/// An existing file whose content is byte-identical to the new content is not a conflict (this
/// lets `issue` copy `ca.pem` into a directory that already holds the same CA certificate).
pub(crate) fn write_all(outputs: &[Output], force: bool) -> Result<(), CertError> {
    for out in check_all(outputs, force)? {
        if force {
            replace(&out.path, &out.contents, out.mode)?;
        } else {
            create_new(&out.path, &out.contents, out.mode)?;
        }
    }
    Ok(())
}

/// The conflict check of [`write_all`] alone: the outputs that need writing, or the first
/// refused one.
pub(crate) fn check_all(outputs: &[Output], force: bool) -> Result<Vec<&Output>, CertError> {
    let mut todo = Vec::with_capacity(outputs.len());
    for out in outputs {
        match fs::read(&out.path) {
            Ok(existing) if existing == out.contents => continue,
            Ok(_) if !force => {
                return Err(CertError::Exists {
                    path: out.path.clone(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CertError::io(&out.path, e)),
        }
        todo.push(out);
    }
    Ok(todo)
}

/// Atomically replaces (or creates) `path` via a temporary file and a rename.
pub(crate) fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    if let Err(e) = create_new(&tmp, contents, mode) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CertError::io(path, e)
    })
}

/// Creates `path`, failing if it exists (so a concurrent writer is never clobbered).
fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CertError::Exists {
            path: path.to_owned(),
        },
        _ => CertError::io(path, e),
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| CertError::io(path, e))
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|e| CertError::io(path, e))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn checks_every_target_before_writing_any() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&b, "old").unwrap();
        let outs = [
            Output::new(a.clone(), "new", PRIVATE),
            Output::new(b.clone(), "new", PUBLIC),
        ];
        let err = write_all(&outs, false).unwrap_err();
        assert!(
            matches!(&err, CertError::Exists { path } if *path == b),
            "{err}"
        );
        assert!(
            !a.exists(),
            "nothing may be written when one target is refused"
        );

        write_all(&outs, true).unwrap();
        assert_eq!(fs::read_to_string(&b).unwrap(), "new");
        assert_eq!(mode(&a), PRIVATE);
    }

    #[test]
    fn identical_content_is_not_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, "same").unwrap();
        write_all(&[Output::new(a, "same", PUBLIC)], false).unwrap();
    }

    #[test]
    fn forced_replace_gives_keys_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        fs::write(&k, "old").unwrap();
        fs::set_permissions(&k, fs::Permissions::from_mode(0o644)).unwrap();
        write_all(&[Output::new(k.clone(), "new", PRIVATE)], true).unwrap();
        assert_eq!(mode(&k), PRIVATE);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
    }
}
