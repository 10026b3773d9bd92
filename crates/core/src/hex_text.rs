//! Lowercase hex of a digest, for token storage ids and audit HMACs (once or many times per
//! request). `hex::encode` collects a `String` one `char` at a time: 2,200 instructions for a
//! 32-byte digest under `bench/instructions`, against a few hundred through a byte buffer.

/// `bytes` as lowercase hex.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex_lower(&mut out, bytes);
    out
}

/// Appends `bytes` as lowercase hex to `out`, through a buffer on the stack (so a key made of a
/// prefix and a digest is one allocation).
pub(crate) fn push_hex_lower(out: &mut String, bytes: &[u8]) {
    const CHUNK: usize = 32;
    for chunk in bytes.chunks(CHUNK) {
        let mut buf = [0u8; CHUNK * 2];
        let text = buf
            .get_mut(..chunk.len() * 2)
            .and_then(|hex| hex::encode_to_slice(chunk, hex).ok().map(|()| &*hex))
            // Hex digits are ASCII.
            .and_then(|hex| std::str::from_utf8(hex).ok());
        match text {
            Some(text) => out.push_str(text),
            None => out.push_str(&hex::encode(chunk)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{hex_lower, push_hex_lower};

    #[test]
    fn matches_hex_encode() {
        for len in [0usize, 1, 2, 31, 32, 33, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(hex_lower(&bytes), hex::encode(&bytes));
        }
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        let mut key = String::from("id/");
        push_hex_lower(&mut key, &[0xab; 40]);
        assert_eq!(key, format!("id/{}", hex::encode([0xab; 40])));
    }
}
