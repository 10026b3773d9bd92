//! `bunker kv ...`: the key/value engine, v1 and v2, with `-mount=M PATH` or `M/PATH`.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::kv_path::{self, KvTarget};
use super::{print_list, success, CmdResult, Ctx};
use crate::client::{ApiRequest, Client, Verb};
use crate::error::{CliError, Doing, EXIT_OK};
use crate::input::{duration_flag, parse_kv_args, parse_options, StdinSource};
use crate::output::{self, data_rows, key_value_table, section, Format};

#[derive(Subcommand, Debug)]
pub(crate) enum KvCommand {
    /// Read a secret (the latest version, or `-version=N`).
    Get(GetArgs),
    /// Write a secret (a new version on v2).
    Put(PutArgs),
    /// Update some keys of a secret, keeping the others (v2).
    Patch(PutArgs),
    /// Delete a secret (v2: the latest version, or `-versions`).
    Delete(VersionsArgs),
    /// Restore deleted versions (v2).
    Undelete(VersionsArgs),
    /// Permanently destroy versions (v2).
    Destroy(VersionsArgs),
    /// List keys under a path.
    List(ListArgs),
    /// Read and manage secret metadata (v2).
    #[command(subcommand)]
    Metadata(MetadataCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum MetadataCommand {
    /// Show the metadata and every version of a secret.
    Get(PathArgs),
    /// Set max-versions, cas-required, delete-version-after, custom metadata.
    Put(MetadataPutArgs),
    /// Delete a secret with all its versions and metadata.
    Delete(PathArgs),
}

/// The mount and path every kv command takes.
#[derive(Args, Debug)]
pub(crate) struct PathArgs {
    /// The engine's mount; PATH is then relative to it.
    #[arg(long)]
    mount: Option<String>,
    /// The secret's path (`secret/foo`, or `foo` with `-mount=secret`).
    path: String,
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Version to read (v2).
    #[arg(long)]
    version: Option<u64>,
    /// Print only this key of the data.
    #[arg(long)]
    field: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Check-and-set: 0 writes only if the secret does not exist, N only if at version N.
    #[arg(long, allow_negative_numbers = true)]
    cas: Option<i64>,
    /// Print only this field of the response.
    #[arg(long)]
    field: Option<String>,
    /// Data: `k=v`, `k=@file`, `k=-`, `@file.json` or `-`.
    data: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct VersionsArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Comma-separated versions, e.g. `-versions=1,2`.
    #[arg(long, value_delimiter = ',')]
    versions: Vec<u64>,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// The engine's mount; PATH is then relative to it.
    #[arg(long)]
    mount: Option<String>,
    /// The path to list (may be empty with `-mount`).
    #[arg(default_value = "")]
    path: String,
}

#[derive(Args, Debug)]
pub(crate) struct MetadataPutArgs {
    #[command(flatten)]
    target: PathArgs,
    /// Number of versions to keep (0 means the mount's setting).
    #[arg(long)]
    max_versions: Option<u64>,
    /// Require check-and-set on every write.
    #[arg(long)]
    cas_required: Option<bool>,
    /// Delete versions this long after they are written (`0s` disables).
    #[arg(long, value_parser = duration_flag)]
    delete_version_after: Option<String>,
    /// Custom metadata as `k=v`; repeatable.
    #[arg(long)]
    custom_metadata: Vec<String>,
}

pub(crate) fn run(ctx: &Ctx, command: KvCommand) -> CmdResult {
    let client = ctx.client()?;
    match command {
        KvCommand::Get(args) => get(ctx, &client, args),
        KvCommand::Put(args) => put(ctx, &client, args, false),
        KvCommand::Patch(args) => put(ctx, &client, args, true),
        KvCommand::Delete(args) => delete(ctx, &client, args),
        KvCommand::Undelete(args) => versions_op(ctx, &client, args, "undelete"),
        KvCommand::Destroy(args) => versions_op(ctx, &client, args, "destroy"),
        KvCommand::List(args) => list(ctx, &client, args),
        KvCommand::Metadata(MetadataCommand::Get(args)) => metadata_get(ctx, &client, args),
        KvCommand::Metadata(MetadataCommand::Put(args)) => metadata_put(ctx, &client, args),
        KvCommand::Metadata(MetadataCommand::Delete(args)) => metadata_delete(ctx, &client, args),
    }
}

fn resolve(client: &Client, args: &PathArgs) -> Result<KvTarget, CliError> {
    kv_path::resolve(client, args.mount.as_deref(), &args.path)
}

fn get(ctx: &Ctx, client: &Client, args: GetArgs) -> CmdResult {
    let target = resolve(client, &args.target)?;
    let api_path = target.api_path("data");
    let mut request = ApiRequest::new(Verb::Get, &api_path).not_found_ok();
    if let Some(version) = args.version {
        target.require_v2("-version")?;
        request = request.query("version", version.to_string());
    }
    let response = client
        .send(request)
        .doing(format!("reading {api_path}"))?
        .body
        .ok_or_else(|| CliError::not_found(&api_path))?;
    if output::print_if_wrapped(ctx.format(), &response, args.field.as_deref())? {
        return Ok(EXIT_OK);
    }
    let data = secret_data(&response, target.version);
    if let Some(field) = &args.field {
        let value = data
            .and_then(|d| d.get(field))
            .ok_or_else(|| CliError::Invalid(format!("Field \"{field}\" not present in secret")))?;
        output::emit_raw(&output::raw(value))?;
        return Ok(EXIT_OK);
    }
    if target.version == 1 || ctx.format() == Format::Json {
        output::print_response(ctx.format(), &response, None)?;
        return Ok(EXIT_OK);
    }
    output::print_warnings(&response);
    output::emit(&v2_secret_text(&api_path, &response))?;
    Ok(EXIT_OK)
}

/// The secret's key/values: `data.data` on v2, `data` on v1.
fn secret_data(response: &Value, version: u8) -> Option<&Map<String, Value>> {
    let data = response.get("data")?;
    let data = if version == 2 {
        data.get("data")?
    } else {
        data
    };
    data.as_object()
}

/// `kv get` on v2: the secret path, then the metadata and data sections.
fn v2_secret_text(api_path: &str, response: &Value) -> String {
    let mut text = format!("{}{api_path}\n", section("Secret Path", ""));
    let data = response.get("data");
    if let Some(metadata) = data
        .and_then(|d| d.get("metadata"))
        .and_then(Value::as_object)
    {
        text.push('\n');
        text.push_str(&section("Metadata", &key_value_table(&data_rows(metadata))));
    }
    if let Some(secret) = data.and_then(|d| d.get("data")).and_then(Value::as_object) {
        text.push('\n');
        text.push_str(&section("Data", &key_value_table(&data_rows(secret))));
    }
    text
}

/// The body of a v2 write: `{"data": ..., "options": {"cas": N}}`.
fn v2_write_body(data: Map<String, Value>, cas: Option<i64>) -> Value {
    let mut body = json!({ "data": data });
    if let (Some(cas), Some(object)) = (cas, body.as_object_mut()) {
        object.insert("options".into(), json!({ "cas": cas }));
    }
    body
}

fn put(ctx: &Ctx, client: &Client, args: PutArgs, patch: bool) -> CmdResult {
    let data = parse_kv_args(&args.data, &mut StdinSource::process())?;
    if data.is_empty() {
        return Err(CliError::Usage("Must supply data (k=v, @file or -)".into()));
    }
    let target = resolve(client, &args.target)?;
    if patch {
        target.require_v2("kv patch")?;
    }
    if target.version == 1 {
        if args.cas.is_some() {
            target.require_v2("-cas")?;
        }
        let path = &target.full_path;
        let response = client
            .send(ApiRequest::new(Verb::Put, path).json(&Value::Object(data)))
            .doing(format!("writing data to {path}"))?
            .body;
        if let Some(response) = &response {
            if output::print_if_wrapped(ctx.format(), response, args.field.as_deref())? {
                return Ok(EXIT_OK);
            }
        }
        return success(ctx, &format!("Success! Data written to: {path}"));
    }
    let api_path = target.api_path("data");
    let body = v2_write_body(data, args.cas);
    let request = if patch {
        ApiRequest::new(Verb::Patch, &api_path).merge_patch(&body)
    } else {
        ApiRequest::new(Verb::Put, &api_path).json(&body)
    };
    let response = client
        .send(request)
        .doing(format!("writing data to {api_path}"))?
        .body;
    let Some(response) = response else {
        return success(ctx, &format!("Success! Data written to: {api_path}"));
    };
    if output::print_if_wrapped(ctx.format(), &response, args.field.as_deref())? {
        return Ok(EXIT_OK);
    }
    if args.field.is_some() || ctx.format() == Format::Json {
        output::print_response(ctx.format(), &response, args.field.as_deref())?;
        return Ok(EXIT_OK);
    }
    output::print_warnings(&response);
    let metadata = response.get("data").and_then(Value::as_object);
    let table = key_value_table(&metadata.map(data_rows).unwrap_or_default());
    output::emit(&format!(
        "{}{api_path}\n\n{}",
        section("Secret Path", ""),
        section("Metadata", &table)
    ))?;
    Ok(EXIT_OK)
}

fn delete(ctx: &Ctx, client: &Client, args: VersionsArgs) -> CmdResult {
    let target = resolve(client, &args.target)?;
    let (request, shown) = if target.version == 1 {
        if !args.versions.is_empty() {
            target.require_v2("-versions")?;
        }
        let path = target.full_path.clone();
        (ApiRequest::new(Verb::Delete, &path), path)
    } else if args.versions.is_empty() {
        let path = target.api_path("data");
        (ApiRequest::new(Verb::Delete, &path), path)
    } else {
        let path = target.api_path("delete");
        let body = json!({ "versions": args.versions });
        (ApiRequest::new(Verb::Post, &path).json(&body), path)
    };
    client.send(request).doing(format!("deleting {shown}"))?;
    success(
        ctx,
        &format!("Success! Data deleted (if it existed) at: {shown}"),
    )
}

/// `undelete` (POST) and `destroy` (PUT) of explicit versions.
fn versions_op(ctx: &Ctx, client: &Client, args: VersionsArgs, op: &str) -> CmdResult {
    if args.versions.is_empty() {
        return Err(CliError::Usage(format!(
            "No versions provided, use the \"-versions\" flag to specify the versions to {op}."
        )));
    }
    let target = resolve(client, &args.target)?;
    target.require_v2(&format!("kv {op}"))?;
    let path = target.api_path(op);
    let verb = if op == "destroy" {
        Verb::Put
    } else {
        Verb::Post
    };
    let body = json!({ "versions": args.versions });
    client
        .send(ApiRequest::new(verb, &path).json(&body))
        .doing(format!("writing data to {path}"))?;
    success(ctx, &format!("Success! Data written to: {path}"))
}

fn list(ctx: &Ctx, client: &Client, args: ListArgs) -> CmdResult {
    let target = kv_path::resolve(client, args.mount.as_deref(), &args.path)?;
    let path = target.api_path("metadata");
    let response = client
        .send(ApiRequest::new(Verb::List, &path).not_found_ok())
        .doing(format!("listing {path}"))?;
    print_list(ctx, response.body.as_ref(), &path)
}

fn metadata_get(ctx: &Ctx, client: &Client, args: PathArgs) -> CmdResult {
    let target = resolve(client, &args)?;
    target.require_v2("kv metadata")?;
    let path = target.api_path("metadata");
    let response = client
        .send(ApiRequest::new(Verb::Get, &path).not_found_ok())
        .doing(format!("reading {path}"))?
        .body
        .ok_or_else(|| CliError::not_found(&path))?;
    if output::print_if_wrapped(ctx.format(), &response, None)? {
        return Ok(EXIT_OK);
    }
    if ctx.format() == Format::Json {
        output::emit(&output::pretty_json(&response))?;
        return Ok(EXIT_OK);
    }
    output::print_warnings(&response);
    output::emit(&metadata_text(&path, &response))?;
    Ok(EXIT_OK)
}

/// `kv metadata get`: the metadata fields, then one section per version, oldest first.
fn metadata_text(path: &str, response: &Value) -> String {
    let empty = Map::new();
    let data = response
        .get("data")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut fields = data.clone();
    let versions = fields.remove("versions");
    let mut text = format!("{}{path}\n\n", section("Metadata Path", ""));
    text.push_str(&section("Metadata", &key_value_table(&data_rows(&fields))));
    let mut versions: Vec<(u64, &Map<String, Value>)> = versions
        .as_ref()
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_object()?)))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|(number, _)| *number);
    for (number, version) in versions {
        text.push('\n');
        let title = format!("Version {number}");
        text.push_str(&section(&title, &key_value_table(&data_rows(version))));
    }
    text
}

fn metadata_put(ctx: &Ctx, client: &Client, args: MetadataPutArgs) -> CmdResult {
    let target = resolve(client, &args.target)?;
    target.require_v2("kv metadata")?;
    let path = target.api_path("metadata");
    let body = metadata_body(&args)?;
    client
        .send(ApiRequest::new(Verb::Post, &path).json(&body))
        .doing(format!("writing data to {path}"))?;
    success(ctx, &format!("Success! Data written to: {path}"))
}

fn metadata_body(args: &MetadataPutArgs) -> Result<Value, CliError> {
    let mut body = Map::new();
    if let Some(max_versions) = args.max_versions {
        body.insert("max_versions".into(), json!(max_versions));
    }
    if let Some(cas_required) = args.cas_required {
        body.insert("cas_required".into(), json!(cas_required));
    }
    if let Some(after) = &args.delete_version_after {
        body.insert("delete_version_after".into(), json!(after));
    }
    if !args.custom_metadata.is_empty() {
        let custom = parse_options(&args.custom_metadata)?;
        body.insert("custom_metadata".into(), Value::Object(custom));
    }
    Ok(Value::Object(body))
}

fn metadata_delete(ctx: &Ctx, client: &Client, args: PathArgs) -> CmdResult {
    let target = resolve(client, &args)?;
    target.require_v2("kv metadata")?;
    let path = target.api_path("metadata");
    client
        .send(ApiRequest::new(Verb::Delete, &path))
        .doing(format!("deleting {path}"))?;
    success(
        ctx,
        &format!("Success! Data deleted (if it existed) at: {path}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_body_wraps_data_and_cas() {
        let mut data = Map::new();
        data.insert("a".into(), json!("b"));
        assert_eq!(
            v2_write_body(data.clone(), None),
            json!({"data": {"a": "b"}})
        );
        assert_eq!(
            v2_write_body(data, Some(0)),
            json!({"data": {"a": "b"}, "options": {"cas": 0}})
        );
    }

    #[test]
    fn secret_data_depends_on_version() {
        let v2 = json!({"data": {"data": {"k": "v"}, "metadata": {"version": 1}}});
        assert_eq!(
            secret_data(&v2, 2).and_then(|d| d.get("k")),
            Some(&json!("v"))
        );
        let v1 = json!({"data": {"k": "v1"}});
        assert_eq!(
            secret_data(&v1, 1).and_then(|d| d.get("k")),
            Some(&json!("v1"))
        );
        let deleted = json!({"data": {"data": null, "metadata": {}}});
        assert!(secret_data(&deleted, 2).is_none());
    }

    #[test]
    fn get_table_has_path_metadata_and_data_sections() {
        let response = json!({"data": {
            "data": {"password": "hunter2"},
            "metadata": {"version": 1, "destroyed": false, "deletion_time": "",
                         "custom_metadata": null}
        }});
        let text = v2_secret_text("secret/data/creds", &response);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first().copied(), Some("== Secret Path =="));
        assert_eq!(lines.get(1).copied(), Some("secret/data/creds"));
        assert!(lines.iter().any(|l| l.trim_matches('=') == " Metadata "));
        assert!(text.contains("custom_metadata    <nil>"));
        assert!(text.contains("deletion_time      n/a"));
        let data_banner = lines.iter().position(|l| l.trim_matches('=') == " Data ");
        let data_header = data_banner.and_then(|i| lines.get(i + 1)).copied();
        assert_eq!(data_header, Some("Key         Value"));
        assert!(text.ends_with("password    hunter2\n"));
    }

    #[test]
    fn metadata_versions_are_numbered_in_order() {
        let response = json!({"data": {
            "current_version": 10, "max_versions": 0,
            "versions": {"10": {"destroyed": false}, "2": {"destroyed": true}}
        }});
        let text = metadata_text("secret/metadata/foo", &response);
        let v2 = text.find("Version 2 ");
        let v10 = text.find("Version 10 ");
        assert!(v2.is_some() && v10.is_some() && v2 < v10);
        assert!(text.contains("current_version    10"));
        assert!(!text.contains("versions    {"));
    }

    #[test]
    fn metadata_body_only_has_given_fields() -> Result<(), CliError> {
        let args = MetadataPutArgs {
            target: PathArgs {
                mount: None,
                path: "secret/foo".into(),
            },
            max_versions: Some(3),
            cas_required: None,
            delete_version_after: Some("1h".into()),
            custom_metadata: vec!["owner=ann".into()],
        };
        assert_eq!(
            metadata_body(&args)?,
            json!({"max_versions": 3, "delete_version_after": "1h",
                   "custom_metadata": {"owner": "ann"}})
        );
        Ok(())
    }
}
