//! LIST and SCAN over any ordered key source, shared by every backend.
//!
//! A backend supplies "iterate keys from this bound upward"; these functions turn that into
//! Vault's LIST (immediate children) and a prefix scan. LIST never walks a child directory's
//! subtree: on meeting `prefix + "b/..."` it emits `b/` and seeks to `prefix + "b0"`, the first
//! key past every key starting with `prefix + "b/"` (`'0'` is the byte after `'/'`). Listing a
//! directory therefore costs one seek per child directory plus one step per leaf, however large
//! the subtrees are.
//!
//! Output is sorted and free of duplicates without a sort: keys arrive in byte order, a child is
//! a prefix of the key it came from, and a directory's other keys are skipped.

use std::ops::Bound;

use crate::Result;

/// The immediate children of `prefix`, in order. `keys_from(start)` must yield every key
/// `>= start` in ascending byte order. A key equal to `prefix` is not a child of it.
pub(crate) fn list_children<F, I, K>(prefix: &str, mut keys_from: F) -> Result<Vec<String>>
where
    F: FnMut(&str) -> Result<I>,
    I: Iterator<Item = Result<K>>,
    K: AsRef<str>,
{
    let mut children = Vec::new();
    let mut start = prefix.to_owned();
    'seek: loop {
        for key in keys_from(&start)? {
            let key = key?;
            let Some(rest) = key.as_ref().strip_prefix(prefix) else {
                break 'seek;
            };
            match rest.split_once('/') {
                Some((dir, _)) => {
                    children.push(format!("{dir}/"));
                    start = format!("{prefix}{dir}0");
                    continue 'seek;
                }
                None if rest.is_empty() => {}
                None => children.push(rest.to_owned()),
            }
        }
        break;
    }
    Ok(children)
}

/// Up to `limit` entries whose keys start with `prefix` and are strictly greater than `after`,
/// in order. `entries_from(bound)` must yield every entry past `bound` in ascending key order.
pub(crate) fn scan_prefix<F, I>(
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    entries_from: F,
) -> Result<Vec<(String, Vec<u8>)>>
where
    F: FnOnce(Bound<&str>) -> Result<I>,
    I: Iterator<Item = Result<(String, Vec<u8>)>>,
{
    let mut entries = Vec::new();
    if limit == 0 {
        return Ok(entries);
    }
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    for entry in entries_from(start)? {
        let (key, value) = entry?;
        if !key.starts_with(prefix) {
            break;
        }
        entries.push((key, value));
        if entries.len() >= limit {
            break;
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeSet;

    use super::*;

    /// Lists `prefix` over `keys`, returning the children and how many keys were visited.
    fn list_counting(keys: &BTreeSet<String>, prefix: &str) -> (Vec<String>, usize) {
        let visited = Cell::new(0usize);
        let children = list_children(prefix, |start| {
            Ok(keys
                .range::<str, _>((Bound::Included(start), Bound::Unbounded))
                .inspect(|_| visited.set(visited.get() + 1))
                .map(Ok::<_, crate::StorageError>))
        });
        match children {
            Ok(children) => (children, visited.get()),
            Err(e) => panic!("listing {prefix:?}: {e}"),
        }
    }

    #[test]
    fn list_skips_child_subtrees() {
        let mut keys: BTreeSet<String> = (0..10_000).map(|i| format!("dir/big/{i:05}")).collect();
        keys.insert("dir/a".into());
        keys.insert("dir/z".into());
        keys.insert("other".into());
        let (children, visited) = list_counting(&keys, "dir/");
        assert_eq!(children, ["a", "big/", "z"]);
        // a, the first key of big/, z, and the key that ends the walk.
        assert_eq!(visited, 4);
    }

    #[test]
    fn list_handles_a_child_directory_with_an_empty_name() {
        let keys: BTreeSet<String> = ["ab/x", "a/b", "a/c/d", "a-b"]
            .into_iter()
            .map(String::from)
            .collect();
        let (children, _) = list_counting(&keys, "a");
        assert_eq!(children, ["-b", "/", "b/"]);
    }
}
