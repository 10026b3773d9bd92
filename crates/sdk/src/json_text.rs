//! JSON text of a `serde_json::Value`, byte for byte what `serde_json::to_writer` writes
//! (compact), with a fast path for strings that need no escaping.
//!
//! Why: serde_json escapes a string one byte at a time (a bounds-checked split per byte), and
//! a KV write's secret value, its map keys and the response's strings made that about a tenth
//! of the request runtime's instructions (bench/README.md, "Instructions per write"). Here a
//! string is first checked eight bytes at a time for the only bytes JSON escapes (`"`, `\` and
//! controls below 0x20); one without them is copied as it is, any other (and every number) is
//! handed to serde_json, so the text is always serde_json's. A test compares the two on
//! generated values.

use serde_json::{Map, Value};

/// Appends `value` as JSON to `out`.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_serialized(out, number),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push(b'[');
            for (at, item) in items.iter().enumerate() {
                if at > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_map(out, map),
    }
}

/// Appends `map` as a JSON object to `out`.
pub fn write_map(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    for (at, (key, value)) in map.iter().enumerate() {
        if at > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

/// Appends `text` as a JSON string to `out`.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    if needs_escaping(text.as_bytes()) {
        write_serialized(out, text);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Appends serde_json's text of `value` (a string, a number, a boolean, an option of one:
/// writing those to a `Vec` cannot fail; `null` if it ever did).
pub fn write_serialized<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Whether any byte of `word` is zero.
fn has_zero_byte(word: u64) -> bool {
    word.wrapping_sub(ONES) & !word & HIGHS != 0
}

/// Whether JSON escapes any byte of `bytes`: `"`, `\` or a control below 0x20 (serde_json
/// escapes exactly these; other bytes, UTF-8 included, are written as they are).
fn needs_escaping(bytes: &[u8]) -> bool {
    let escaped = |byte: u8| byte < 0x20 || byte == b'"' || byte == b'\\';
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            return true;
        };
        let word = u64::from_ne_bytes(word);
        // A byte below 0x20: subtracting 0x20 borrows into its high bit, which the byte
        // itself did not have (the test is exact for the word as a whole).
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
        if control
            || has_zero_byte(word ^ (ONES * u64::from(b'"')))
            || has_zero_byte(word ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words.remainder().iter().any(|&byte| escaped(byte))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn text_of(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, value);
        out
    }

    #[test]
    fn every_byte_is_escaped_as_serde_json_escapes_it() {
        for byte in 0u8..=0x7f {
            for at in 0..17 {
                let mut text = "a".repeat(16);
                text.insert(at, char::from(byte));
                let value = Value::String(text);
                assert_eq!(
                    text_of(&value),
                    serde_json::to_vec(&value).unwrap(),
                    "byte {byte:#x} at {at}"
                );
            }
        }
        let unicode = Value::String("ключ 値 \u{7f} \u{2028} 😀".repeat(5));
        assert_eq!(text_of(&unicode), serde_json::to_vec(&unicode).unwrap());
    }

    /// The word-at-a-time check agrees with the byte test for every byte value at every
    /// position, over backgrounds next to the bytes it tells apart (a borrow from a lower byte
    /// must not hide or invent one).
    #[test]
    fn the_escape_check_is_exact_for_every_byte() {
        let escaped = |byte: u8| byte < 0x20 || byte == b'"' || byte == b'\\';
        for background in [0x20u8, 0x21, 0x23, 0x5b, 0x5d, 0x61, 0x7f, 0x80, 0xff] {
            for byte in 0u8..=0xff {
                for at in 0..17 {
                    let mut bytes = [background; 17];
                    bytes[at] = byte;
                    assert_eq!(
                        needs_escaping(&bytes),
                        escaped(byte),
                        "byte {byte:#x} at {at} among {background:#x}"
                    );
                }
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let bytes: [u8; 16] = rng.gen();
            assert_eq!(needs_escaping(&bytes), bytes.iter().any(|&b| escaped(b)));
        }
    }

    fn generated(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
        const PIECES: &[&str] = &["a", "value", "\"", "\\", "\n", "\u{1}", "é", "値", " ", "/"];
        let text = |rng: &mut rand::rngs::StdRng| -> String {
            (0..rng.gen_range(0..40))
                .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
                .collect()
        };
        match rng.gen_range(0..if depth > 3 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.gen()),
            2 => Value::from(rng.gen::<i64>()),
            3 => Value::from(rng.gen::<f64>() * 1e6 - 5e5),
            4 => Value::from(rng.gen::<u64>()),
            5 => Value::String(text(rng)),
            6 => Value::Array(
                (0..rng.gen_range(0..5))
                    .map(|_| generated(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.gen_range(0..5))
                    .map(|_| (text(rng), generated(rng, depth + 1)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn generated_values_are_written_as_serde_json_writes_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for _ in 0..2000 {
            let value = generated(&mut rng, 0);
            assert_eq!(
                text_of(&value),
                serde_json::to_vec(&value).unwrap(),
                "{value}"
            );
        }
    }
}
