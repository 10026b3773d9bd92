//! KV v2's stored records, the rules that combine mount config with key metadata, and the
//! JSON shapes Vault returns for them.
//!
//! Times are stored as Unix nanoseconds (cheap to compare for `deletion_time`) and rendered as
//! RFC 3339 UTC with nanoseconds. Every record carries a `format` number so a later Bunker can
//! recognise and migrate it; a record with a newer format than this code knows is refused
//! rather than misread.

use std::collections::BTreeMap;
use std::sync::Arc;

use bunker_sdk::{Data, LogicalError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{get_json, Store};
use bunker_sdk::duration::format_duration;
use bunker_storage::Op;

/// Storage key of the mount configuration.
pub(crate) const CONFIG_KEY: &str = "config";
/// Prefix of key metadata records: `metadata/<path>`.
pub(crate) const METADATA_PREFIX: &str = "metadata/";
/// Prefix of version data records: `versions/<path>/<version>`.
pub(crate) const VERSIONS_PREFIX: &str = "versions/";
/// Versions kept per key when neither the key nor the mount sets `max_versions` (Vault's).
pub(crate) const DEFAULT_MAX_VERSIONS: u64 = 10;
/// Current record format.
const RECORD_FORMAT: u32 = 1;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Current time as Unix nanoseconds. Injected so tests can move time.
pub(crate) type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub(crate) fn system_clock() -> Clock {
    Arc::new(|| i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

/// `now + secs`, saturating far in the future.
pub(crate) fn add_secs(now_ns: i64, secs: u64) -> i64 {
    i64::try_from(secs)
        .ok()
        .and_then(|s| s.checked_mul(NANOS_PER_SEC))
        .and_then(|d| now_ns.checked_add(d))
        .unwrap_or(i64::MAX)
}

fn record_format() -> u32 {
    RECORD_FORMAT
}

fn check_format(format: u32, what: &str) -> Result<()> {
    if format > RECORD_FORMAT {
        return Err(LogicalError::Internal(format!(
            "{what} has record format {format}, newer than this server understands ({RECORD_FORMAT})"
        )));
    }
    Ok(())
}

/// Mount-wide settings (`config` endpoint).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct MountConfig {
    #[serde(default = "record_format")]
    pub format: u32,
    /// 0 means Vault's default of 10.
    #[serde(default)]
    pub max_versions: u64,
    #[serde(default)]
    pub cas_required: bool,
    /// 0 disables automatic deletion.
    #[serde(default)]
    pub delete_version_after_secs: u64,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            format: RECORD_FORMAT,
            max_versions: 0,
            cas_required: false,
            delete_version_after_secs: 0,
        }
    }
}

/// Appends `name` (the JSON text before a value) and `value` as serde_json writes it.
fn field<T: Serialize>(out: &mut Vec<u8>, name: &[u8], value: &T) {
    out.extend_from_slice(name);
    bunker_sdk::json_text::write_serialized(out, value);
}

/// Per-version bookkeeping kept inside the key's metadata.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct VersionMeta {
    pub created_ns: i64,
    /// When the version was (or will be, under `delete_version_after`) soft-deleted.
    #[serde(default)]
    pub deletion_ns: Option<i64>,
    #[serde(default)]
    pub destroyed: bool,
}

impl VersionMeta {
    /// Soft-deleted as of `now_ns` (a scheduled deletion counts once its time has come).
    pub(crate) fn is_deleted(&self, now_ns: i64) -> bool {
        self.deletion_ns.is_some_and(|at| at <= now_ns)
    }

    pub(crate) fn is_readable(&self, now_ns: i64) -> bool {
        !self.destroyed && !self.is_deleted(now_ns)
    }
}

/// Everything known about one key except its version data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct KeyMetadata {
    #[serde(default = "record_format")]
    pub format: u32,
    pub created_ns: i64,
    pub updated_ns: i64,
    pub current_version: u64,
    /// 0 until versions have been trimmed, then the oldest kept version (as Vault reports it).
    #[serde(default)]
    pub oldest_version: u64,
    /// 0 means "use the mount's".
    #[serde(default)]
    pub max_versions: u64,
    #[serde(default)]
    pub cas_required: bool,
    #[serde(default)]
    pub delete_version_after_secs: u64,
    #[serde(default)]
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// Kept versions, oldest first. At most the effective `max_versions` entries.
    #[serde(default)]
    pub versions: BTreeMap<u64, VersionMeta>,
}

impl KeyMetadata {
    /// The bytes serde_json writes for this metadata (a test compares them on records with
    /// every field set and unset, at edge values): its field names as constants, its strings through `bunker_sdk::json_text`
    /// and its numbers through serde_json. Written on every KV write; serde_json escaped
    /// each of its dozen field names a byte at a time.
    pub(crate) fn encode(&self) -> Vec<u8> {
        use bunker_sdk::json_text::write_str;
        let mut out = Vec::with_capacity(crate::store::RECORD_BYTES);
        field(&mut out, b"{\"format\":", &self.format);
        field(&mut out, b",\"created_ns\":", &self.created_ns);
        field(&mut out, b",\"updated_ns\":", &self.updated_ns);
        field(&mut out, b",\"current_version\":", &self.current_version);
        field(&mut out, b",\"oldest_version\":", &self.oldest_version);
        field(&mut out, b",\"max_versions\":", &self.max_versions);
        field(&mut out, b",\"cas_required\":", &self.cas_required);
        let after = &self.delete_version_after_secs;
        field(&mut out, b",\"delete_version_after_secs\":", after);
        out.extend_from_slice(b",\"custom_metadata\":");
        match &self.custom_metadata {
            None => out.extend_from_slice(b"null"),
            Some(custom) => {
                out.push(b'{');
                for (at, (key, value)) in custom.iter().enumerate() {
                    if at > 0 {
                        out.push(b',');
                    }
                    write_str(&mut out, key);
                    out.push(b':');
                    write_str(&mut out, value);
                }
                out.push(b'}');
            }
        }
        out.extend_from_slice(b",\"versions\":{");
        for (at, (number, version)) in self.versions.iter().enumerate() {
            if at > 0 {
                out.push(b',');
            }
            // serde_json writes an integer map key as a string.
            out.push(b'"');
            bunker_sdk::json_text::write_serialized(&mut out, number);
            out.push(b'"');
            field(&mut out, b":{\"created_ns\":", &version.created_ns);
            field(&mut out, b",\"deletion_ns\":", &version.deletion_ns);
            field(&mut out, b",\"destroyed\":", &version.destroyed);
            out.push(b'}');
        }
        out.extend_from_slice(b"}}");
        out
    }

    pub(crate) fn new(now_ns: i64) -> Self {
        KeyMetadata {
            format: RECORD_FORMAT,
            created_ns: now_ns,
            updated_ns: now_ns,
            current_version: 0,
            oldest_version: 0,
            max_versions: 0,
            cas_required: false,
            delete_version_after_secs: 0,
            custom_metadata: None,
            versions: BTreeMap::new(),
        }
    }
}

/// The data of one version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct VersionRecord {
    #[serde(default = "record_format")]
    pub format: u32,
    pub data: Data,
}

/// A version's record as it is written: the bytes serde_json writes for a [`VersionRecord`]
/// of `data` (a test compares them), the data written from the request's own, not copied, and
/// its strings through `bunker_sdk::json_text` (a secret's value is most of a write's JSON).
pub(crate) fn encode_version_record(data: &Data) -> Vec<u8> {
    let mut out = Vec::with_capacity(crate::store::RECORD_BYTES);
    out.extend_from_slice(b"{\"format\":");
    out.extend_from_slice(itoa::Buffer::new().format(RECORD_FORMAT).as_bytes());
    out.extend_from_slice(b",\"data\":");
    bunker_sdk::json_text::write_map(&mut out, data);
    out.push(b'}');
    out
}

/// The batch op that stores `meta` as the metadata of `path`.
pub(crate) fn metadata_op(path: &str, meta: &KeyMetadata) -> Op {
    Op::Put {
        key: metadata_key(path),
        value: meta.encode(),
    }
}

pub(crate) fn metadata_key(path: &str) -> String {
    [METADATA_PREFIX, path].concat()
}

/// The version number is the last segment, so distinct (path, version) pairs never share a
/// key even when one path is a folder of another (`a` v1 is `versions/a/1`, `a/1` v1 is
/// `versions/a/1/1`). Versions are always deleted one by one, never by prefix, for the same
/// reason.
pub(crate) fn version_key(path: &str, version: u64) -> String {
    // One allocation, no formatting machinery: built on every write and every read.
    let mut digits = itoa::Buffer::new();
    [VERSIONS_PREFIX, path, "/", digits.format(version)].concat()
}

pub(crate) async fn load_config(store: Store<'_>) -> Result<MountConfig> {
    let config = get_json::<MountConfig>(store, CONFIG_KEY)
        .await?
        .unwrap_or_default();
    check_format(config.format, "kv config")?;
    Ok(config)
}

pub(crate) async fn load_metadata(store: Store<'_>, path: &str) -> Result<Option<KeyMetadata>> {
    let meta = get_json::<KeyMetadata>(store, &metadata_key(path)).await?;
    if let Some(meta) = &meta {
        check_format(meta.format, "kv key metadata")?;
    }
    Ok(meta)
}

pub(crate) async fn load_version(
    store: Store<'_>,
    path: &str,
    version: u64,
) -> Result<Option<VersionRecord>> {
    let record = get_json::<VersionRecord>(store, &version_key(path, version)).await?;
    if let Some(record) = &record {
        check_format(record.format, "kv version data")?;
    }
    Ok(record)
}

/// The key's own `max_versions`, else the mount's, else 10.
pub(crate) fn effective_max_versions(config: &MountConfig, meta: &KeyMetadata) -> u64 {
    [meta.max_versions, config.max_versions]
        .into_iter()
        .find(|&n| n > 0)
        .unwrap_or(DEFAULT_MAX_VERSIONS)
}

/// The shorter of the key's and the mount's `delete_version_after`, ignoring unset (0) ones.
pub(crate) fn effective_delete_after_secs(config: &MountConfig, meta: &KeyMetadata) -> Option<u64> {
    [
        meta.delete_version_after_secs,
        config.delete_version_after_secs,
    ]
    .into_iter()
    .filter(|&s| s > 0)
    .min()
}

pub(crate) fn cas_required(config: &MountConfig, meta: Option<&KeyMetadata>) -> bool {
    config.cas_required || meta.is_some_and(|m| m.cas_required)
}

/// Drop the oldest versions until at most `max` remain; returns the dropped version numbers
/// (whose data the caller must delete in the same batch).
pub(crate) fn trim_versions(meta: &mut KeyMetadata, max: u64) -> Vec<u64> {
    let keep = usize::try_from(max).unwrap_or(usize::MAX).max(1);
    let mut dropped = Vec::new();
    while meta.versions.len() > keep {
        match meta.versions.pop_first() {
            Some((version, _)) => dropped.push(version),
            None => break,
        }
    }
    if !dropped.is_empty() {
        meta.oldest_version = meta.versions.keys().next().copied().unwrap_or(0);
    }
    dropped
}

/// RFC 3339 UTC with nanoseconds, e.g. `2018-03-22T02:24:06.945319214Z`.
pub(crate) fn format_time(ns: i64) -> Result<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| LogicalError::Internal(format!("timestamp {ns} cannot be formatted")))
}

fn deletion_time(vm: &VersionMeta) -> Result<String> {
    vm.deletion_ns.map_or(Ok(String::new()), format_time)
}

fn custom_metadata_value(meta: &KeyMetadata) -> Value {
    match &meta.custom_metadata {
        None => Value::Null,
        Some(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    }
}

/// `{created_time, custom_metadata, deletion_time, destroyed, version}`: the `metadata` of a
/// data read and the body of a data write.
pub(crate) fn version_metadata(meta: &KeyMetadata, version: u64, vm: &VersionMeta) -> Result<Data> {
    let mut out = Data::new();
    out.insert(
        "created_time".into(),
        Value::String(format_time(vm.created_ns)?),
    );
    out.insert("custom_metadata".into(), custom_metadata_value(meta));
    out.insert("deletion_time".into(), Value::String(deletion_time(vm)?));
    out.insert("destroyed".into(), Value::Bool(vm.destroyed));
    out.insert("version".into(), Value::from(version));
    Ok(out)
}

/// The body of a metadata read.
pub(crate) fn key_metadata(meta: &KeyMetadata) -> Result<Data> {
    let mut versions = Data::new();
    for (number, vm) in &meta.versions {
        let mut entry = Data::new();
        entry.insert(
            "created_time".into(),
            Value::String(format_time(vm.created_ns)?),
        );
        entry.insert("deletion_time".into(), Value::String(deletion_time(vm)?));
        entry.insert("destroyed".into(), Value::Bool(vm.destroyed));
        versions.insert(number.to_string(), Value::Object(entry));
    }
    let mut out = Data::new();
    out.insert("cas_required".into(), Value::Bool(meta.cas_required));
    out.insert(
        "created_time".into(),
        Value::String(format_time(meta.created_ns)?),
    );
    out.insert("current_version".into(), Value::from(meta.current_version));
    out.insert("custom_metadata".into(), custom_metadata_value(meta));
    out.insert(
        "delete_version_after".into(),
        Value::String(format_duration(meta.delete_version_after_secs)),
    );
    out.insert("max_versions".into(), Value::from(meta.max_versions));
    out.insert("oldest_version".into(), Value::from(meta.oldest_version));
    out.insert(
        "updated_time".into(),
        Value::String(format_time(meta.updated_ns)?),
    );
    out.insert("versions".into(), Value::Object(versions));
    Ok(out)
}

/// The body of a config read.
pub(crate) fn config_data(config: &MountConfig) -> Data {
    let mut out = Data::new();
    out.insert("cas_required".into(), Value::Bool(config.cas_required));
    out.insert(
        "delete_version_after".into(),
        Value::String(format_duration(config.delete_version_after_secs)),
    );
    out.insert("max_versions".into(), Value::from(config.max_versions));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_key_is_the_path_and_the_number() {
        assert_eq!(version_key("a/b", 12), "versions/a/b/12");
        assert_eq!(version_key("x", 0), "versions/x/0");
        assert_eq!(
            version_key("x", u64::MAX),
            format!("versions/x/{}", u64::MAX)
        );
    }

    #[test]
    fn time_format_is_rfc3339_utc_with_nanos() {
        assert_eq!(format_time(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_time(1_521_685_446_945_319_214).unwrap(),
            "2018-03-22T02:24:06.945319214Z"
        );
        assert!(format_time(i64::MAX).is_ok());
    }

    /// A written record and the record type that reads it are one stored format.
    #[test]
    fn a_new_version_record_is_written_as_a_version_record() {
        let mut data = Data::new();
        data.insert("v".into(), serde_json::json!("x\"y"));
        data.insert("n".into(), serde_json::json!({"a": [1, null]}));
        data.insert("s".into(), serde_json::json!("plain text, é 値"));
        data.insert("f".into(), serde_json::json!(1.5e300));
        let written = encode_version_record(&data);
        let owned = VersionRecord {
            format: RECORD_FORMAT,
            data: data.clone(),
        };
        assert_eq!(written, serde_json::to_vec(&owned).unwrap());
        let read: VersionRecord = serde_json::from_slice(&written).unwrap();
        assert_eq!(read, owned);
    }

    /// Metadata written by hand is serde_json's text of it, byte for byte, and reads back.
    #[test]
    fn metadata_is_written_as_serde_json_writes_it() {
        let check = |meta: &KeyMetadata| {
            let written = meta.encode();
            assert_eq!(
                String::from_utf8(written.clone()).unwrap(),
                serde_json::to_string(meta).unwrap()
            );
            let read: KeyMetadata = serde_json::from_slice(&written).unwrap();
            assert_eq!(&read, meta);
        };
        let mut meta = KeyMetadata::new(1_700_000_000_123_456_789);
        check(&meta);
        meta.created_ns = -5;
        meta.current_version = 3;
        meta.oldest_version = 2;
        meta.max_versions = u64::MAX;
        meta.cas_required = true;
        meta.delete_version_after_secs = 60;
        meta.versions.insert(
            2,
            VersionMeta {
                created_ns: 10,
                deletion_ns: Some(-1),
                destroyed: true,
            },
        );
        meta.versions.insert(
            u64::MAX,
            VersionMeta {
                created_ns: i64::MAX,
                deletion_ns: None,
                destroyed: false,
            },
        );
        check(&meta);
        meta.custom_metadata = Some(BTreeMap::from([
            ("owner".to_owned(), "ops \"team\"\n\\".to_owned()),
            ("é 値".to_owned(), String::new()),
        ]));
        check(&meta);
        meta.custom_metadata = Some(BTreeMap::new());
        check(&meta);
    }

    #[test]
    fn effective_settings() {
        let mut config = MountConfig::default();
        let mut meta = KeyMetadata::new(0);
        assert_eq!(effective_max_versions(&config, &meta), 10);
        config.max_versions = 4;
        assert_eq!(effective_max_versions(&config, &meta), 4);
        meta.max_versions = 2;
        assert_eq!(effective_max_versions(&config, &meta), 2);

        assert_eq!(effective_delete_after_secs(&config, &meta), None);
        config.delete_version_after_secs = 60;
        assert_eq!(effective_delete_after_secs(&config, &meta), Some(60));
        meta.delete_version_after_secs = 30;
        assert_eq!(effective_delete_after_secs(&config, &meta), Some(30));
        meta.delete_version_after_secs = 90;
        assert_eq!(effective_delete_after_secs(&config, &meta), Some(60));
    }

    #[test]
    fn trimming_keeps_newest() {
        let mut meta = KeyMetadata::new(0);
        for v in 1..=5 {
            meta.versions.insert(
                v,
                VersionMeta {
                    created_ns: 0,
                    deletion_ns: None,
                    destroyed: false,
                },
            );
        }
        assert!(trim_versions(&mut meta, 5).is_empty());
        assert_eq!(meta.oldest_version, 0);
        assert_eq!(trim_versions(&mut meta, 3), vec![1, 2]);
        assert_eq!(meta.oldest_version, 3);
        assert_eq!(
            meta.versions.keys().copied().collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        // max 0 is never "keep nothing".
        assert_eq!(trim_versions(&mut meta, 0), vec![3, 4]);
        assert_eq!(meta.versions.len(), 1);
    }

    #[test]
    fn add_secs_saturates() {
        assert_eq!(add_secs(0, 2), 2_000_000_000);
        assert_eq!(add_secs(i64::MAX - 1, 5), i64::MAX);
        assert_eq!(add_secs(0, u64::MAX), i64::MAX);
    }

    #[test]
    fn newer_formats_are_refused() {
        assert!(check_format(RECORD_FORMAT, "x").is_ok());
        assert!(matches!(
            check_format(RECORD_FORMAT + 1, "x"),
            Err(LogicalError::Internal(_))
        ));
    }
}
