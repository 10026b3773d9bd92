//! Test-only pause points, compiled in with the `failpoints` feature (never in a release
//! build): a test holds a task at a named point deterministically instead of racing to catch
//! a state by timing.
//!
//! With `BUNKER_FAILPOINTS_DIR=DIR` in the environment, [`hold`] at point `NAME` waits while
//! the file `DIR/NAME` exists, after creating `DIR/NAME.reached` so the test knows it got
//! there. Without the feature, [`hold`] is an empty inline function.

#[cfg(feature = "failpoints")]
pub async fn hold(name: &str) {
    use std::time::Duration;
    let Some(dir) = std::env::var_os("BUNKER_FAILPOINTS_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let gate = dir.join(name);
    if !tokio::fs::try_exists(&gate).await.unwrap_or(false) {
        return;
    }
    let _ = tokio::fs::write(dir.join(format!("{name}.reached")), b"").await;
    tracing::warn!(failpoint = name, "held at a failpoint");
    while tokio::fs::try_exists(&gate).await.unwrap_or(false) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(failpoint = name, "released from a failpoint");
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hold(_name: &str) {}

/// Say at start that failpoints are compiled in, so a test that needs them can tell a binary
/// built without them from a point that was never reached.
pub fn announce() {
    #[cfg(feature = "failpoints")]
    if let Some(dir) = std::env::var_os("BUNKER_FAILPOINTS_DIR") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("enabled"), b"");
    }
}
