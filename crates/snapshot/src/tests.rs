#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;

fn sample() -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut file = Encoder::header();
    let page1 = vec![("a".to_string(), b"1".to_vec()), ("b".into(), vec![0, 255])];
    let page2 = vec![("c/d".to_string(), vec![7; 100])];
    file.extend(enc.part(&page1).unwrap());
    file.extend(enc.part(&page2).unwrap());
    let meta = SnapshotMeta {
        cluster_id: "c1".into(),
        wal_index: Some(9),
        ..Default::default()
    };
    file.extend(enc.finish(meta).unwrap());
    file
}

#[test]
fn round_trip() {
    let file = sample();
    let manifest = verify(file.as_slice()).unwrap();
    assert_eq!(manifest.entries, 3);
    assert_eq!(manifest.parts.len(), 2);
    assert_eq!(manifest.meta.cluster_id, "c1");
    assert_eq!(manifest.meta.wal_index, Some(9));
    let mut keys = Vec::new();
    read_snapshot(file.as_slice(), |part| {
        keys.extend(part.into_iter().map(|(k, _)| k));
        Ok(())
    })
    .unwrap();
    assert_eq!(keys, ["a", "b", "c/d"]);
}

#[test]
fn every_truncation_is_refused() {
    let file = sample();
    for len in 0..file.len() {
        assert!(
            verify(&file[..len]).is_err(),
            "a file cut at {len} of {} bytes must be refused",
            file.len()
        );
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let file = sample();
    for i in 0..file.len() {
        let mut bad = file.clone();
        bad[i] ^= 0x01;
        assert!(verify(bad.as_slice()).is_err(), "byte {i} altered");
    }
    let mut longer = file.clone();
    longer.push(0);
    assert!(verify(longer.as_slice()).is_err(), "trailing bytes");
}

#[test]
fn unordered_keys_are_refused() {
    let mut enc = Encoder::new();
    let mut file = Encoder::header();
    file.extend(enc.part(&[("b".into(), vec![])]).unwrap());
    file.extend(enc.part(&[("a".into(), vec![])]).unwrap());
    file.extend(enc.finish(SnapshotMeta::default()).unwrap());
    let err = verify(file.as_slice()).unwrap_err().to_string();
    assert!(err.contains("increasing"), "{err}");
}
