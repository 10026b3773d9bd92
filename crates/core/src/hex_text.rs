//! Lowercase hex of a digest, for token storage ids and audit HMACs (once or many times per
//! request). `hex::encode` collects a `String` one `char` at a time: 2,200 instructions for a
//! 32-byte digest under `bench/instructions`, against a few hundred through a byte buffer.

/// `bytes` as lowercase hex.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    // Fails only when `out` is not twice as long as `bytes`, which it is.
    if hex::encode_to_slice(bytes, &mut out).is_err() {
        return hex::encode(bytes);
    }
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_else(|_| hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::hex_lower;

    #[test]
    fn matches_hex_encode() {
        for len in [0usize, 1, 2, 31, 32, 33, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(hex_lower(&bytes), hex::encode(&bytes));
        }
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
