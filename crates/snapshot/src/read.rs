//! Reading a snapshot file: every check of the format, streaming a frame at a time.

use std::io::Read;

use sha2::{Digest, Sha256};

use crate::{
    read_exact, Manifest, PartInfo, Result, SnapshotError, FORMAT_VERSION, MAGIC, MANIFEST_TAG,
    MAX_MANIFEST_BYTES, MAX_PART_BYTES, PART_TAG,
};

fn invalid(message: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(message.into())
}

/// Checks the whole file and returns its manifest; nothing is handed out.
pub fn verify(r: impl Read) -> Result<Manifest> {
    read_snapshot(r, |_| Ok(()))
}

/// Reads the file, handing each part's entries to `on_part` as it is checked. A part's
/// checksum can only be compared once the manifest (at the end) is read, so a caller that must
/// not act on a damaged file calls [`verify`] first and this second.
pub fn read_snapshot(
    mut r: impl Read,
    mut on_part: impl FnMut(Vec<(String, Vec<u8>)>) -> Result<()>,
) -> Result<Manifest> {
    let header = read_exact(&mut r, MAGIC.len() + 4, "the header")?;
    let (magic, version) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(invalid("not a Bunker snapshot (bad magic)"));
    }
    let version = u32::from_be_bytes(version.try_into().map_err(|_| invalid("header"))?);
    if version != FORMAT_VERSION {
        return Err(invalid(format!(
            "format version {version} (this server reads {FORMAT_VERSION})"
        )));
    }
    let mut seen: Vec<PartInfo> = Vec::new();
    let mut last_key: Option<String> = None;
    loop {
        let head = read_exact(&mut r, 5, "a frame header")?;
        let (tag, len) = head.split_at(1);
        let len = u32::from_be_bytes(len.try_into().map_err(|_| invalid("frame header"))?);
        let len = usize::try_from(len).map_err(|_| invalid("frame length"))?;
        match tag.first().copied() {
            Some(PART_TAG) => {
                if len > MAX_PART_BYTES {
                    return Err(invalid(format!("part {} is too large", seen.len())));
                }
                let body = read_exact(&mut r, len, "a part")?;
                let entries = decode_part(&body, &mut last_key)
                    .map_err(|e| invalid(format!("part {}: {e}", seen.len())))?;
                seen.push(PartInfo {
                    entries: entries.len() as u64,
                    bytes: body.len() as u64,
                    sha256: hex::encode(Sha256::digest(&body)),
                });
                on_part(entries)?;
            }
            Some(MANIFEST_TAG) => {
                if len > MAX_MANIFEST_BYTES {
                    return Err(invalid("the manifest is too large"));
                }
                let json = read_exact(&mut r, len, "the manifest")?;
                let sum = read_exact(&mut r, 32, "the manifest checksum")?;
                if Sha256::digest(&json).as_slice() != sum.as_slice() {
                    return Err(invalid("the manifest checksum does not match"));
                }
                let mut rest = [0u8; 1];
                if r.read(&mut rest)? != 0 {
                    return Err(invalid("bytes follow the manifest"));
                }
                let manifest: Manifest =
                    serde_json::from_slice(&json).map_err(|e| invalid(format!("manifest: {e}")))?;
                check_manifest(&manifest, &seen)?;
                return Ok(manifest);
            }
            _ => return Err(invalid("unknown frame")),
        }
    }
}

/// The manifest must describe exactly the parts read.
fn check_manifest(manifest: &Manifest, seen: &[PartInfo]) -> Result<()> {
    if manifest.format_version != FORMAT_VERSION {
        return Err(invalid(
            "the manifest's format version differs from the header",
        ));
    }
    if manifest.parts.len() != seen.len() {
        return Err(invalid(format!(
            "the manifest lists {} parts, the file holds {}",
            manifest.parts.len(),
            seen.len()
        )));
    }
    if let Some(i) = (0..seen.len()).find(|&i| manifest.parts.get(i) != seen.get(i)) {
        return Err(invalid(format!("part {i} does not match its checksum")));
    }
    let entries: u64 = seen.iter().map(|p| p.entries).sum();
    let bytes: u64 = seen.iter().map(|p| p.bytes).sum();
    if manifest.entries != entries || manifest.bytes != bytes {
        return Err(invalid("the manifest's totals do not match the parts"));
    }
    Ok(())
}

/// The entries of one part; keys must be strictly increasing, continuing from `last_key`.
fn decode_part(
    mut body: &[u8],
    last_key: &mut Option<String>,
) -> std::result::Result<Vec<(String, Vec<u8>)>, String> {
    let mut entries = Vec::new();
    while !body.is_empty() {
        let key = take_field(&mut body)?;
        let key = String::from_utf8(key.to_vec()).map_err(|_| "a key is not UTF-8")?;
        let value = take_field(&mut body)?.to_vec();
        if key.is_empty() || last_key.as_ref().is_some_and(|last| *last >= key) {
            return Err("keys are not in strictly increasing order".into());
        }
        *last_key = Some(key.clone());
        entries.push((key, value));
    }
    if entries.is_empty() {
        return Err("empty part".into());
    }
    Ok(entries)
}

fn take_field<'a>(body: &mut &'a [u8]) -> std::result::Result<&'a [u8], String> {
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or("an entry is cut short")?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| "entry length")?;
    if rest.len() < len {
        return Err("an entry is cut short".into());
    }
    let (field, rest) = rest.split_at(len);
    *body = rest;
    Ok(field)
}
