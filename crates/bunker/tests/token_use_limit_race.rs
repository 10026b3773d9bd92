//! A use-limited token is spent atomically: N requests racing with a `num_uses = k` token get
//! exactly k successes, however they interleave.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bunker_testkit as common;

use std::sync::{Arc, Barrier};

use common::TestServer;
use serde_json::json;

const RACERS: usize = 20;

/// Fire `RACERS` simultaneous `lookup-self` requests with `token`; returns the status codes.
fn race(s: &TestServer, token: &str) -> Vec<u16> {
    let start = Arc::new(Barrier::new(RACERS));
    let url = s.url("auth/token/lookup-self");
    let handles: Vec<_> = (0..RACERS)
        .map(|_| {
            let client = s.client().clone();
            let start = start.clone();
            let url = url.clone();
            let token = token.to_owned();
            std::thread::spawn(move || {
                start.wait();
                client
                    .get(&url)
                    .header("X-Vault-Token", token)
                    .send()
                    .expect("lookup-self transport")
                    .status()
                    .as_u16()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("racer thread"))
        .collect()
}

fn assert_exactly(s: &TestServer, num_uses: u64, rounds: usize) {
    for round in 0..rounds {
        let token = s.create_token(json!({"policies": ["default"], "num_uses": num_uses}));
        let codes = race(s, &token);
        let ok = codes.iter().filter(|c| **c == 200).count();
        let denied = codes.iter().filter(|c| **c == 403).count();
        assert_eq!(
            (ok, denied),
            (num_uses as usize, RACERS - num_uses as usize),
            "round {round}: num_uses={num_uses} token, {RACERS} parallel requests: {codes:?}"
        );
        // Spent tokens are revoked.
        let (st, b) = s.get("auth/token/lookup-self", Some(&token));
        assert_eq!(st, 403, "a spent token must be refused: {b}");
    }
}

#[test]
fn single_use_token_succeeds_exactly_once_under_concurrency() {
    let s = TestServer::initialized();
    assert_exactly(&s, 1, 5);
}

#[test]
fn three_use_token_succeeds_exactly_three_times_under_concurrency() {
    let s = TestServer::initialized();
    assert_exactly(&s, 3, 5);
}
