#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The README's crate table says what each crate depends on: it must be what the crates'
//! `Cargo.toml` files say, for every crate under `crates/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The Bunker crates in the `[dependencies]` of `crates/<name>/Cargo.toml`.
fn cargo_deps(name: &str) -> BTreeSet<String> {
    let manifest = repo().join("crates").join(name).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut in_deps = false;
    let mut deps = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps {
            if let Some(rest) = line.strip_prefix("bunker-") {
                let end = rest.find(['.', ' ', '=']).unwrap_or(rest.len());
                deps.insert(rest[..end].to_owned());
            }
        }
    }
    deps
}

/// The README's table: crate → the crates it depends on (text in parentheses is commentary).
fn readme_deps() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = text
        .find("| crate | depends on |")
        .expect("the README's crate table");
    let mut table = BTreeMap::new();
    for row in text[start..].lines().skip(2) {
        let Some(row) = row.strip_prefix('|') else {
            break;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let deps = cells[1].split('(').next().unwrap_or("");
        let deps = deps
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect();
        table.insert(cells[0].to_owned(), deps);
    }
    table
}

#[test]
fn the_readme_crate_table_matches_the_cargo_files() {
    let table = readme_deps();
    let crates: BTreeSet<String> = std::fs::read_dir(repo().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            repo()
                .join("crates")
                .join(name)
                .join("Cargo.toml")
                .is_file()
        })
        .collect();
    assert_eq!(
        table.keys().cloned().collect::<BTreeSet<_>>(),
        crates,
        "every crate has a row, and every row a crate"
    );
    for (name, deps) in &table {
        assert_eq!(deps, &cargo_deps(name), "README row of {name}");
    }
}
