//! The blob store on disk: metadata files written atomically, and the scan that rebuilds
//! the index at start-up.

use std::{
    collections::HashMap,
    io::{self, Read, Seek, SeekFrom, Write},
    path::Path,
    time::UNIX_EPOCH,
};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::Entry;
use crate::{
    blob::{BlobId, MAX_MANIFEST_FRAME_BYTES, Manifest, chunk_hash},
    wire,
};

/// Longest metadata file.
const MAX_META_BYTES: usize = MAX_MANIFEST_FRAME_BYTES + 1024;

/// What `<id>.meta` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Meta {
    /// The uploading device (peer id bytes).
    pub(super) owner: ByteBuf,
    /// Its user id, for quotas.
    pub(super) user: ByteBuf,
    pub(super) manifest: Manifest,
    pub(super) read_cap_hash: ByteBuf,
    pub(super) created_ms: u64,
    pub(super) expires_ms: u64,
    pub(super) complete: bool,
}

pub(super) use crate::server::now_ms;

pub(super) fn hex(id: &BlobId) -> String {
    tern_crypto::hex::encode(id)
}

fn unhex(s: &str) -> Option<BlobId> {
    tern_crypto::hex::decode_array(s)
}

/// Free bytes on the file system holding `dir` for an unprivileged writer.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// A refusal to send on the stream.
pub(super) fn write_meta(dir: &Path, id: &BlobId, meta: &Meta) -> io::Result<()> {
    let bytes = wire::encode("blob meta", meta, MAX_META_BYTES)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let tmp = dir.join(format!("{}.meta.tmp", hex(id)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(format!("{}.meta", hex(id))))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Loads the index from `dir`: every blob with a readable meta file, its durable mark
/// derived from the data file (a torn tail cut, the last whole chunk checked). Temporary
/// and orphaned files are deleted.
pub(super) fn scan(dir: &Path) -> io::Result<HashMap<BlobId, Entry>> {
    let mut blobs = HashMap::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    for name in &names {
        let Some(id) = name.strip_suffix(".meta").and_then(unhex) else {
            continue;
        };
        let path = dir.join(name);
        let meta: Option<Meta> = std::fs::read(&path)
            .ok()
            .and_then(|b| wire::decode("blob meta", &b, MAX_META_BYTES).ok());
        let Some(mut meta) = meta.filter(|m| {
            m.manifest.check(u64::MAX).is_ok()
                && m.manifest.id() == id
                && m.read_cap_hash.len() == 32
        }) else {
            tracing::warn!(file = %name, "unreadable blob metadata; deleting the blob");
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(dir.join(format!("{}.data", hex(&id))));
            continue;
        };
        let Ok(owner) = PeerId::from_bytes(&meta.owner) else {
            continue;
        };
        let data = dir.join(format!("{}.data", hex(&id)));
        let (have, progress_ms) = recover_data(&data, &meta.manifest)?;
        if have < meta.manifest.chunks() {
            meta.complete = false;
        }
        blobs.insert(
            id,
            Entry {
                owner,
                meta,
                have,
                uploading: false,
                progress_ms,
            },
        );
    }
    for name in &names {
        let stale = if let Some(stem) = name.strip_suffix(".data") {
            unhex(stem).is_none_or(|id| !blobs.contains_key(&id))
        } else {
            name.ends_with(".tmp")
        };
        if stale {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    Ok(blobs)
}

/// The durable mark of a data file in whole chunks, after cutting a torn tail and checking
/// the last chunk against the manifest; and when it last changed (ms since the epoch).
fn recover_data(path: &Path, manifest: &Manifest) -> io::Result<(u32, u64)> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::File::create(path)?;
            return Ok((0, now_ms()));
        }
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    let modified = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as u64);
    let len = m.len().min(manifest.size);
    let mut have = if len == manifest.size {
        manifest.chunks()
    } else {
        (len / u64::from(manifest.chunk_size)) as u32
    };
    if have > 0 {
        let last = have - 1;
        let mut buf = vec![0u8; manifest.chunk_len(last)];
        f.seek(SeekFrom::Start(manifest.offset(last)))?;
        f.read_exact(&mut buf)?;
        if chunk_hash(&buf) != manifest.hashes[last as usize] {
            have = last;
        }
    }
    let keep = manifest.offset(have).min(manifest.size);
    if m.len() != keep {
        f.set_len(keep)?;
        f.sync_all()?;
    }
    Ok((have, modified))
}

/// Starts the blob service: loads the index from `<data_dir>/blobs/`, then accepts
/// `/tern/blob/1` streams from `incoming` (each in a task of its own) and collects garbage
/// every `gc_secs`, until `stop` turns true.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = [0xa5; 32];
        assert_eq!(unhex(&hex(&id)), Some(id));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
    }

    #[test]
    fn recovery_cuts_a_torn_tail_and_a_bad_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let m = Manifest::of_file(&src, 1024).unwrap();
        let data = dir.path().join("data");
        // Two whole chunks and a torn third.
        std::fs::write(&data, &bytes[..2500]).unwrap();
        assert_eq!(recover_data(&data, &m).unwrap().0, 2);
        assert_eq!(std::fs::metadata(&data).unwrap().len(), 2048);
        // A last whole chunk that does not match is dropped too.
        let mut bad = bytes[..3072].to_vec();
        bad[3000] ^= 1;
        std::fs::write(&data, &bad).unwrap();
        assert_eq!(recover_data(&data, &m).unwrap().0, 2);
        assert_eq!(std::fs::metadata(&data).unwrap().len(), 2048);
        // The whole file, with its short last chunk.
        std::fs::write(&data, &bytes).unwrap();
        assert_eq!(recover_data(&data, &m).unwrap().0, 5);
        // A missing data file is an empty one.
        std::fs::remove_file(&data).unwrap();
        assert_eq!(recover_data(&data, &m).unwrap().0, 0);
    }
}
