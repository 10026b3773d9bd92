#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use super::*;
use crate::Fence;

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.into(),
        value: value.to_vec(),
    }
}

fn delete(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

fn single() -> ReadCache {
    ReadCache::new(Arc::new(FenceCell::default()), CACHE_BYTES)
}

fn ticket(cache: &ReadCache, key: &str) -> Ticket {
    match cache.lookup(key) {
        Lookup::Miss(ticket) => ticket,
        Lookup::Hit(value) => panic!("{key} should not be cached, found {value:?}"),
        Lookup::Bypass => panic!("{key}: the cache should be in use"),
    }
}

fn hit(cache: &ReadCache, key: &str) -> Option<Vec<u8>> {
    match cache.lookup(key) {
        Lookup::Hit(value) => value,
        Lookup::Miss(_) => panic!("{key} should be cached"),
        Lookup::Bypass => panic!("{key}: the cache should be in use"),
    }
}

fn active(fence: &FenceCell, epoch: u64) {
    fence.set(Fence::Active {
        node_id: "n".into(),
        epoch,
    });
    fence.extend_lease(epoch, Instant::now() + Duration::from_secs(60));
}

#[test]
fn a_read_is_cached_and_so_is_an_absent_key() {
    let cache = single();
    let t = ticket(&cache, "a");
    cache.fill("a", Some(b"1"), t);
    assert_eq!(hit(&cache, "a"), Some(b"1".to_vec()));
    let t = ticket(&cache, "missing");
    cache.fill("missing", None, t);
    assert_eq!(hit(&cache, "missing"), None);
}

#[test]
fn a_read_that_raced_a_write_is_not_cached() {
    let cache = single();
    // The read asked the database before the write committed and got the old value.
    let t = ticket(&cache, "k");
    cache.committed(&[&[put("k", b"new")]], Some(ReadScope::Single));
    cache.fill("k", Some(b"old"), t);
    assert_eq!(hit(&cache, "k"), Some(b"new".to_vec()));
    // The same with a write that failed: nothing is cached, the next read asks.
    let t = ticket(&cache, "u");
    cache.failed(&[&[put("u", b"maybe")]]);
    cache.fill("u", Some(b"old"), t);
    ticket(&cache, "u");
}

#[test]
fn nothing_is_cached_while_a_write_of_unknown_outcome_may_still_commit() {
    let cache = single();
    let t = ticket(&cache, "k");
    cache.fill("k", Some(b"1"), t);
    let before = ticket(&cache, "j");
    // The connection broke during a commit of k = 2: the server may apply it at any time.
    cache.suspend();
    assert!(matches!(cache.lookup("k"), Lookup::Bypass));
    assert_eq!(cache.len(), 0, "what was cached may be stale: dropped");
    cache.committed(&[&[put("w", b"x")]], Some(ReadScope::Single));
    assert!(matches!(cache.lookup("w"), Lookup::Bypass));
    // The session ended: the write committed or never will; caching starts again, empty.
    cache.resume();
    cache.fill("j", Some(b"read before the suspension"), before);
    ticket(&cache, "j");
    ticket(&cache, "k");
    ticket(&cache, "w");
    let t = ticket(&cache, "k");
    cache.fill("k", Some(b"2"), t);
    assert_eq!(hit(&cache, "k"), Some(b"2".to_vec()));
}

#[test]
fn commits_write_through_in_order_and_deletes_cache_absence() {
    let cache = single();
    let t = ticket(&cache, "k");
    cache.fill("k", Some(b"0"), t);
    cache.committed(
        &[&[put("k", b"1")], &[put("k", b"2"), put("j", b"x")]],
        Some(ReadScope::Single),
    );
    assert_eq!(hit(&cache, "k"), Some(b"2".to_vec()), "the last write wins");
    assert_eq!(hit(&cache, "j"), Some(b"x".to_vec()));
    cache.committed(&[&[delete("k")]], Some(ReadScope::Single));
    assert_eq!(hit(&cache, "k"), None);
    cache.failed(&[&[put("j", b"y")]]);
    ticket(&cache, "j");
}

#[test]
fn a_standby_and_an_active_node_past_its_lease_read_the_database() {
    let fence = Arc::new(FenceCell::default());
    let cache = ReadCache::new(fence.clone(), CACHE_BYTES);
    fence.set(Fence::Standby);
    assert!(matches!(cache.lookup("k"), Lookup::Bypass));
    fence.set(Fence::Active {
        node_id: "n".into(),
        epoch: 3,
    });
    assert!(matches!(cache.lookup("k"), Lookup::Bypass), "no lease yet");
    fence.extend_lease(3, Instant::now());
    assert!(
        matches!(cache.lookup("k"), Lookup::Bypass),
        "a lease that ran out"
    );
    fence.extend_lease(3, Instant::now() + Duration::from_secs(60));
    let t = ticket(&cache, "k");
    cache.fill("k", Some(b"v"), t);
    assert_eq!(hit(&cache, "k"), Some(b"v".to_vec()));
    // The lease lapses (the runner missed its renewals): another node may have written k.
    fence.set(Fence::Active {
        node_id: "n".into(),
        epoch: 3,
    });
    assert!(matches!(cache.lookup("k"), Lookup::Bypass));
    assert_eq!(
        cache.len(),
        0,
        "entries are dropped while they cannot be used"
    );
    fence.extend_lease(3, Instant::now() + Duration::from_secs(60));
    ticket(&cache, "k");
}

#[test]
fn a_new_epoch_drops_what_the_last_one_cached() {
    let fence = Arc::new(FenceCell::default());
    let cache = ReadCache::new(fence.clone(), CACHE_BYTES);
    active(&fence, 5);
    let (_, old_term) = fence.get_with_term();
    let t = ticket(&cache, "k");
    cache.fill("k", Some(b"mine"), t);
    let late = ticket(&cache, "late");
    // Lost and taken again: another node may have written in between.
    fence.lost(5);
    active(&fence, 7);
    ticket(&cache, "k");
    // A read that started under the old epoch does not fill the new one.
    cache.fill("late", Some(b"old"), late);
    ticket(&cache, "late");
    // Nor does a commit made under the old epoch.
    let old = ReadScope::Epoch {
        epoch: 5,
        term: old_term,
    };
    cache.committed(&[&[put("w", b"old epoch")]], Some(old));
    ticket(&cache, "w");
    let (_, term) = fence.get_with_term();
    let new = ReadScope::Epoch { epoch: 7, term };
    cache.committed(&[&[put("w", b"new epoch")]], Some(new));
    assert_eq!(hit(&cache, "w"), Some(b"new epoch".to_vec()));
    // Active at epoch 7 once more, after a stretch as a standby: a new scope, an empty cache.
    fence.set(Fence::Standby);
    active(&fence, 7);
    ticket(&cache, "w");
}

#[test]
fn large_values_are_not_cached_and_the_cache_is_bounded_in_bytes() {
    let cache = ReadCache::new(Arc::new(FenceCell::default()), 1024 * 1024);
    let big = vec![7u8; MAX_CACHED_VALUE + 1];
    let t = ticket(&cache, "big");
    cache.fill("big", Some(&big), t);
    ticket(&cache, "big");
    cache.committed(&[&[put("big", &big)]], Some(ReadScope::Single));
    ticket(&cache, "big");
    let value = vec![1u8; 10 * 1024];
    for i in 0..1000 {
        let key = format!("k{i}");
        let t = ticket(&cache, &key);
        cache.fill(&key, Some(&value), t);
    }
    assert!(
        cache.entries.weight() <= 1024 * 1024,
        "{}",
        cache.entries.weight()
    );
    assert!(cache.len() < 1000, "entries were evicted");
}
