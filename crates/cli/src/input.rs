//! Reading user input: `k=v` data arguments, `@file` and `-` (stdin), keys and tokens typed on
//! stdin, and duration flags.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::Path;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::error::CliError;
use crate::output::emit_err;

/// Largest file or stdin document the CLI will read.
const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Stdin, which can be read only once per command.
pub struct StdinSource<R> {
    reader: R,
    consumed: bool,
}

impl StdinSource<std::io::Stdin> {
    /// The process's stdin.
    pub fn process() -> Self {
        StdinSource::new(std::io::stdin())
    }
}

impl<R: Read> StdinSource<R> {
    /// Wraps a reader (tests pass a `Cursor`).
    pub fn new(reader: R) -> Self {
        StdinSource {
            reader,
            consumed: false,
        }
    }

    /// Reads all of stdin, at most [`MAX_INPUT_BYTES`]; fails if it was already read.
    pub fn read_all(&mut self) -> Result<String, CliError> {
        if self.consumed {
            return Err(CliError::Usage(
                "stdin ('-') can only be used once per command".into(),
            ));
        }
        self.consumed = true;
        read_limited(&mut self.reader, "reading stdin")
    }
}

fn read_limited(reader: &mut dyn Read, doing: &str) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::io(doing, e))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(CliError::Invalid(format!(
            "Error {doing}: input is larger than {MAX_INPUT_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| CliError::Invalid(format!("Error {doing}: input is not UTF-8")))
}

/// Reads a whole file as text, at most [`MAX_INPUT_BYTES`].
pub fn read_file(path: &Path) -> Result<String, CliError> {
    let doing = format!("reading file {}", path.display());
    let mut file = File::open(path).map_err(|e| CliError::io(doing.clone(), e))?;
    read_limited(&mut file, &doing)
}

/// Reads a file (or stdin for `-`) as text.
pub fn read_file_or_stdin<R: Read>(
    name: &str,
    stdin: &mut StdinSource<R>,
) -> Result<String, CliError> {
    if name == "-" {
        stdin.read_all()
    } else {
        read_file(Path::new(name))
    }
}

/// Parses `vault write`-style data arguments into a JSON object:
///
/// * `key=value`: a string value; repeating a key collects its values into an array;
/// * `key=@file`: the file's contents as the value;
/// * `key=-`: all of stdin as the value;
/// * `@file`: a JSON object read from the file, merged in;
/// * `-`: a JSON object read from stdin, merged in.
pub fn parse_kv_args<R: Read>(
    args: &[String],
    stdin: &mut StdinSource<R>,
) -> Result<Map<String, Value>, CliError> {
    let mut data = Map::new();
    for arg in args {
        if arg == "-" {
            let text = stdin.read_all()?;
            merge_json_object(&mut data, &text, "stdin")?;
        } else if let Some(path) = arg.strip_prefix('@') {
            let text = read_file(Path::new(path))?;
            merge_json_object(&mut data, &text, path)?;
        } else {
            let (key, value) = arg.split_once('=').ok_or_else(|| {
                CliError::Usage(format!(
                    "Failed to parse K=V data: invalid key/value pair \"{arg}\": \
                     format must be key=value"
                ))
            })?;
            if key.is_empty() {
                return Err(CliError::Usage(format!(
                    "Failed to parse K=V data: empty key in \"{arg}\""
                )));
            }
            let value = if let Some(path) = value.strip_prefix('@') {
                read_file(Path::new(path))?
            } else if value == "-" {
                stdin.read_all()?
            } else {
                value.to_string()
            };
            insert_or_append(&mut data, key, Value::String(value));
        }
    }
    Ok(data)
}

fn merge_json_object(
    data: &mut Map<String, Value>,
    text: &str,
    source: &str,
) -> Result<(), CliError> {
    let parsed: Value = serde_json::from_str(text).map_err(|e| {
        CliError::Invalid(format!(
            "Failed to parse K=V data: invalid JSON in {source}: {e}"
        ))
    })?;
    let Value::Object(object) = parsed else {
        return Err(CliError::Invalid(format!(
            "Failed to parse K=V data: {source} must hold a JSON object"
        )));
    };
    for (key, value) in object {
        data.insert(key, value);
    }
    Ok(())
}

fn insert_or_append(data: &mut Map<String, Value>, key: &str, value: Value) {
    match data.get_mut(key) {
        None => {
            data.insert(key.to_string(), value);
        }
        Some(Value::Array(values)) => values.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

/// Parses `key=value` options (e.g. `audit enable file file_path=...`): values stay strings.
pub fn parse_options(args: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut options = Map::new();
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "Invalid option \"{arg}\": format must be key=value"
                ))
            })?;
        options.insert(key.to_string(), Value::String(value.to_string()));
    }
    Ok(options)
}

/// Reads a secret from a positional argument, or from one line of stdin when the argument is
/// absent or `-`. On a terminal, `prompt` is shown on stderr first.
pub fn secret_arg(arg: Option<&str>, prompt: &str) -> Result<Zeroizing<String>, CliError> {
    match arg {
        Some(value) if value != "-" => Ok(Zeroizing::new(value.to_string())),
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                emit_err(prompt);
            }
            read_first_line(stdin.lock())
        }
    }
}

/// The first line of `reader`, trimmed; an empty line is an error.
pub fn read_first_line(reader: impl Read) -> Result<Zeroizing<String>, CliError> {
    let mut line = Zeroizing::new(String::new());
    BufReader::new(reader.take(MAX_INPUT_BYTES))
        .read_line(&mut line)
        .map_err(|e| CliError::io("reading stdin", e))?;
    let trimmed = Zeroizing::new(line.trim().to_string());
    if trimmed.is_empty() {
        return Err(CliError::Usage("No value provided on stdin".into()));
    }
    Ok(trimmed)
}

/// Clap value parser for duration flags (`-ttl=1h`): checks the syntax and passes the text
/// through for the server to interpret. A bare number means seconds and gets an `s` suffix.
pub fn duration_flag(text: &str) -> Result<String, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(format!("{text}s"));
    }
    if is_duration(text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid duration {text:?}: use a number of seconds or units like 30s, 15m, 1h, 7d"
        ))
    }
}

/// A sequence of `<number><unit>` pairs, e.g. `1h30m`, `1.5h`, `250ms`.
fn is_duration(text: &str) -> bool {
    const UNITS: [&str; 8] = ["ns", "us", "µs", "ms", "s", "m", "h", "d"];
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number.parse::<f64>().is_err() {
            return false;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if !UNITS.contains(&unit) {
            return false;
        }
        rest = next;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{Cursor, Write};

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_stdin() -> StdinSource<Cursor<Vec<u8>>> {
        StdinSource::new(Cursor::new(Vec::new()))
    }

    #[test]
    fn key_values_become_strings() -> Result<(), CliError> {
        let data = parse_kv_args(&args(&["a=1", "b=x=y", "c="]), &mut no_stdin())?;
        assert_eq!(Value::Object(data), json!({"a": "1", "b": "x=y", "c": ""}));
        Ok(())
    }

    #[test]
    fn repeated_keys_collect_into_an_array() -> Result<(), CliError> {
        let data = parse_kv_args(&args(&["p=a", "p=b", "p=c"]), &mut no_stdin())?;
        assert_eq!(Value::Object(data), json!({"p": ["a", "b", "c"]}));
        Ok(())
    }

    #[test]
    fn file_values_and_json_files() -> Result<(), Box<dyn std::error::Error>> {
        let mut value_file = tempfile::NamedTempFile::new()?;
        write!(value_file, "line one\nline two\n")?;
        let mut json_file = tempfile::NamedTempFile::new()?;
        write!(json_file, r#"{{"n": 3, "s": "x"}}"#)?;
        let list = vec![
            format!("cert=@{}", value_file.path().display()),
            format!("@{}", json_file.path().display()),
        ];
        let data = parse_kv_args(&list, &mut no_stdin())?;
        assert_eq!(
            Value::Object(data),
            json!({"cert": "line one\nline two\n", "n": 3, "s": "x"})
        );
        Ok(())
    }

    #[test]
    fn missing_file_is_a_local_error() {
        let err = parse_kv_args(&args(&["k=@/nonexistent/bunker-test"]), &mut no_stdin());
        assert!(matches!(err, Err(CliError::Io { .. })));
    }

    #[test]
    fn stdin_value_and_stdin_object() -> Result<(), CliError> {
        let mut stdin = StdinSource::new(Cursor::new(b"s3cret\n".to_vec()));
        let data = parse_kv_args(&args(&["password=-"]), &mut stdin)?;
        assert_eq!(Value::Object(data), json!({"password": "s3cret\n"}));

        let mut stdin = StdinSource::new(Cursor::new(br#"{"a": {"b": 1}}"#.to_vec()));
        let data = parse_kv_args(&args(&["-", "c=d"]), &mut stdin)?;
        assert_eq!(Value::Object(data), json!({"a": {"b": 1}, "c": "d"}));
        Ok(())
    }

    #[test]
    fn stdin_cannot_be_used_twice() {
        let mut stdin = StdinSource::new(Cursor::new(b"{}".to_vec()));
        let err = parse_kv_args(&args(&["-", "k=-"]), &mut stdin);
        assert!(matches!(err, Err(CliError::Usage(_))));
    }

    #[test]
    fn malformed_pairs_are_rejected() {
        assert!(parse_kv_args(&args(&["novalue"]), &mut no_stdin()).is_err());
        assert!(parse_kv_args(&args(&["=v"]), &mut no_stdin()).is_err());
        let mut stdin = StdinSource::new(Cursor::new(b"[1]".to_vec()));
        assert!(parse_kv_args(&args(&["-"]), &mut stdin).is_err());
    }

    #[test]
    fn options_are_key_value_strings() -> Result<(), CliError> {
        let options = parse_options(&args(&["file_path=/tmp/a.log", "mode=0600"]))?;
        assert_eq!(
            Value::Object(options),
            json!({"file_path": "/tmp/a.log", "mode": "0600"})
        );
        assert!(parse_options(&args(&["bad"])).is_err());
        Ok(())
    }

    #[test]
    fn first_line_is_trimmed() -> Result<(), CliError> {
        let line = read_first_line(Cursor::new(b"  key-one \nsecond\n".to_vec()))?;
        assert_eq!(line.as_str(), "key-one");
        assert!(read_first_line(Cursor::new(b"\n".to_vec())).is_err());
        Ok(())
    }

    #[test]
    fn durations_pass_through() {
        assert_eq!(duration_flag("1h"), Ok("1h".to_string()));
        assert_eq!(duration_flag("1h30m"), Ok("1h30m".to_string()));
        assert_eq!(duration_flag("1.5h"), Ok("1.5h".to_string()));
        assert_eq!(duration_flag("250ms"), Ok("250ms".to_string()));
        assert_eq!(duration_flag("7d"), Ok("7d".to_string()));
        assert_eq!(duration_flag("3600"), Ok("3600s".to_string()));
        assert!(duration_flag("").is_err());
        assert!(duration_flag("h").is_err());
        assert!(duration_flag("1x").is_err());
        assert!(duration_flag("-5s").is_err());
        assert!(duration_flag("1h 30m").is_err());
    }
}
