//! The HA runner's decisions, apart from its I/O so they can be tested without a database.

use std::time::{Duration, Instant};

/// What this node is in its HA cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Standby,
    /// Holds the lock at `epoch` since `since` (RFC 3339).
    Active {
        epoch: u64,
        since: String,
    },
}

/// What the runner does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Sealed or backing off: nothing to do with the lock.
    Idle,
    /// A standby, unsealed: try to take the lock.
    Acquire,
    /// Active: extend the lock.
    Renew { epoch: u64 },
    /// Active but sealed (or told to stop): give the lock up and step down.
    Release { epoch: u64 },
    /// Active, and the lock is gone (the fence tripped or renewal said so): step down.
    StepDown { epoch: u64 },
}

/// What the runner knows when it decides.
#[derive(Clone, Debug)]
pub struct Facts {
    pub role: Role,
    pub sealed: bool,
    /// This node's storage is a DR secondary's: it holds the lock (and follows the primary)
    /// sealed as well as unsealed.
    pub dr_secondary: bool,
    /// The fence still lets this node's writes through at its epoch.
    pub fence_holds: bool,
    /// A standby may not take the lock before this (after a step-down).
    pub backoff_until: Option<Instant>,
    /// When the lock was last renewed (or taken).
    pub last_renewed: Instant,
    pub now: Instant,
    pub lock_ttl: Duration,
}

/// How often an active node renews: three times per TTL, so two failed renewals in a row still
/// leave it the lock.
pub fn renew_interval(ttl: Duration) -> Duration {
    ttl / 3
}

pub fn decide(f: &Facts) -> Step {
    match &f.role {
        Role::Active { epoch, .. } if f.sealed && !f.dr_secondary => {
            Step::Release { epoch: *epoch }
        }
        Role::Active { epoch, .. } if !f.fence_holds => Step::StepDown { epoch: *epoch },
        Role::Active { epoch, .. } => {
            if f.now.saturating_duration_since(f.last_renewed) >= renew_interval(f.lock_ttl) {
                Step::Renew { epoch: *epoch }
            } else {
                Step::Idle
            }
        }
        Role::Standby if f.sealed && !f.dr_secondary => Step::Idle,
        Role::Standby if f.backoff_until.is_some_and(|t| f.now < t) => Step::Idle,
        Role::Standby => Step::Acquire,
    }
}

/// After a renewal that could not reach the database: the lock is as good as lost once a whole
/// TTL passed since the last renewal that did (another node may hold it by now).
pub fn renewal_failed_is_lost(f: &Facts) -> bool {
    f.now.saturating_duration_since(f.last_renewed) >= f.lock_ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(role: Role) -> Facts {
        let now = Instant::now();
        Facts {
            role,
            sealed: false,
            dr_secondary: false,
            fence_holds: true,
            backoff_until: None,
            last_renewed: now,
            now,
            lock_ttl: Duration::from_secs(15),
        }
    }

    fn active() -> Role {
        Role::Active {
            epoch: 7,
            since: String::new(),
        }
    }

    #[test]
    fn a_standby_takes_the_lock_unless_sealed_or_backing_off() {
        let mut f = facts(Role::Standby);
        assert_eq!(decide(&f), Step::Acquire);
        f.sealed = true;
        assert_eq!(decide(&f), Step::Idle);
        f.sealed = false;
        f.backoff_until = Some(f.now + Duration::from_secs(1));
        assert_eq!(decide(&f), Step::Idle);
        f.now += Duration::from_secs(2);
        assert_eq!(decide(&f), Step::Acquire);
    }

    #[test]
    fn an_active_node_renews_at_a_third_of_the_ttl() {
        let mut f = facts(active());
        assert_eq!(decide(&f), Step::Idle);
        f.now += Duration::from_secs(5);
        assert_eq!(decide(&f), Step::Renew { epoch: 7 });
    }

    #[test]
    fn an_active_node_lets_go_when_sealed_and_steps_down_when_fenced() {
        let mut f = facts(active());
        f.fence_holds = false;
        assert_eq!(decide(&f), Step::StepDown { epoch: 7 });
        f.sealed = true;
        assert_eq!(decide(&f), Step::Release { epoch: 7 });
    }

    #[test]
    fn failed_renewals_lose_the_lock_after_a_whole_ttl() {
        let mut f = facts(active());
        f.now += Duration::from_secs(14);
        assert!(!renewal_failed_is_lost(&f));
        f.now += Duration::from_secs(1);
        assert!(renewal_failed_is_lost(&f));
    }

    #[test]
    fn a_dr_secondary_holds_and_takes_the_lock_sealed() {
        let mut f = facts(active());
        f.sealed = true;
        assert_eq!(decide(&f), Step::Release { epoch: 7 });
        f.dr_secondary = true;
        assert_eq!(decide(&f), Step::Idle);
        f.now += Duration::from_secs(5);
        assert_eq!(decide(&f), Step::Renew { epoch: 7 });
        let mut f = facts(Role::Standby);
        f.sealed = true;
        f.dr_secondary = true;
        assert_eq!(decide(&f), Step::Acquire);
    }
}
