//! A timing recorded when it is dropped, so a function's every exit (errors and `?` included)
//! is measured, as Vault's deferred `MeasureSince` is.

use std::time::Instant;

/// Records the milliseconds from [`Timed::start`] to its drop in the summary `name` (through
/// the `metrics` facade; nothing happens without a recorder installed).
pub struct Timed {
    name: &'static str,
    started: Instant,
}

impl Timed {
    pub fn start(name: &'static str) -> Timed {
        Timed {
            name,
            started: Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!(self.name).record(self.started.elapsed().as_secs_f64() * 1000.0);
    }
}
