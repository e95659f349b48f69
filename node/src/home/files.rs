//! Writing and reading the home's files: private directories, atomic and durable writes,
//! bounded reads of secrets.

use std::{
    io::{Read, Write},
    path::Path,
};

use zeroize::Zeroizing;

use super::HomeError;

/// Creates `dir` (and parents) with mode 0700 for the last component.
pub fn create_private_dir(dir: &Path) -> Result<(), HomeError> {
    let io = |source| HomeError::Io {
        op: "create directory",
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

pub(super) fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    let io = |source| HomeError::Io {
        op: "write",
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Writes a file through a temporary and a rename; `private` makes it 0600.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), HomeError> {
    write_atomic_via(path, &path.with_extension("tmp"), bytes, private)
}

/// [`write_atomic`] through the temporary file `tmp` (beside `path`, so the rename stays on
/// one file system); the directory is synced after the rename so the new name is durable.
pub fn write_atomic_via(
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
    private: bool,
) -> Result<(), HomeError> {
    let tmp = tmp.to_owned();
    let io = |source| HomeError::Io {
        op: "write",
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = options.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path)
}

/// Syncs the directory holding `path`, so a rename or removal in it survives a crash.
pub fn sync_dir(path: &Path) -> Result<(), HomeError> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| HomeError::Io {
                op: "sync directory of",
                path: path.to_owned(),
                source,
            })?;
    }
    Ok(())
}

/// Reads a small private file, refusing one that group or others can read.
pub fn read_private(path: &Path, max: usize) -> Result<Zeroizing<Vec<u8>>, HomeError> {
    let io = |source| HomeError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(HomeError::KeyFile {
                path: path.to_owned(),
                reason: "readable by group or others (must be 0600)",
            });
        }
    }
    let mut buf = Zeroizing::new(Vec::new());
    f.take(max as u64 + 1).read_to_end(&mut buf).map_err(io)?;
    Ok(buf)
}
