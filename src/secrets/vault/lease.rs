//! A token's lease as plain data, and the rule for what to do with it next:
//! renew at two thirds of the lease, log in again once renewing stops
//! extending it (the token's max TTL is near) or it cannot be renewed.

use std::time::Duration;

use tokio::time::Instant;

/// Never plan the next step sooner than this: a lease of a few seconds
/// near its max TTL must not turn the renewer into a busy loop.
const MIN_PAUSE: Duration = Duration::from_millis(250);

/// The longest lease believed: Vault's own ceiling is 32 days by default,
/// and a larger number (a bug, a hostile server) must not overflow an
/// `Instant`.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// What Vault said about a token when it was issued, looked up or renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// When the answer arrived.
    pub granted: Instant,
    /// Seconds left then; zero means the token never expires (a root token).
    pub ttl: Duration,
    pub renewable: bool,
    /// A renewal gave less than the one before: the max TTL caps it, and
    /// only a new login gives a longer lease.
    pub capped: bool,
}

/// The renewer's next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The token never expires: nothing to do.
    Nothing,
    /// `renew-self` at this instant.
    Renew(Instant),
    /// Log in again at this instant.
    Relogin(Instant),
}

impl Lease {
    /// A fresh lease (a login or a lookup): not known to be capped.
    pub fn new(granted: Instant, ttl: Duration, renewable: bool) -> Lease {
        Lease {
            granted,
            ttl: ttl.min(MAX_TTL),
            renewable,
            capped: false,
        }
    }

    /// The lease after a renewal that answered `ttl` at `now`. Vault renews
    /// by the same increment each time until the max TTL cuts it, so a
    /// shorter answer than the last one means the cap was reached (a
    /// second of slack for rounding).
    pub fn renewed(&self, now: Instant, ttl: Duration, renewable: bool) -> Lease {
        let ttl = ttl.min(MAX_TTL);
        Lease {
            granted: now,
            ttl,
            renewable,
            capped: ttl + Duration::from_secs(1) < self.ttl,
        }
    }

    /// When the token stops working, if it ever does.
    pub fn expires(&self) -> Option<Instant> {
        (!self.ttl.is_zero()).then(|| self.granted + self.ttl)
    }

    /// Whether a caller should no longer use the token at `now`: its lease
    /// is over or in its last tenth (a read started then could outlive it).
    pub fn spent(&self, now: Instant) -> bool {
        match self.expires() {
            Some(expires) => now + self.ttl / 10 >= expires,
            None => false,
        }
    }

    /// What the renewer does next, and when.
    pub fn next(&self) -> Next {
        if self.ttl.is_zero() {
            return Next::Nothing;
        }
        let at = self.granted + (self.ttl * 2 / 3).max(MIN_PAUSE);
        if self.renewable && !self.capped {
            Next::Renew(at)
        } else {
            Next::Relogin(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_absurd_ttl_from_vault_is_capped_rather_than_overflowing() {
        let t0 = Instant::now();
        let lease = Lease::new(t0, Duration::from_secs(u64::MAX), true);
        assert!(lease.expires().is_some());
        assert!(!lease.spent(t0));
        let renewed = lease.renewed(t0, Duration::from_secs(u64::MAX), true);
        assert!(matches!(renewed.next(), Next::Renew(_)));
    }

    #[test]
    fn a_renewable_token_is_renewed_at_two_thirds_of_its_lease() {
        let t0 = Instant::now();
        let lease = Lease::new(t0, secs(3600), true);
        assert_eq!(lease.next(), Next::Renew(t0 + secs(2400)));
    }

    #[test]
    fn a_token_that_cannot_be_renewed_is_replaced_by_a_new_login() {
        let t0 = Instant::now();
        let lease = Lease::new(t0, secs(60), false);
        assert_eq!(lease.next(), Next::Relogin(t0 + secs(40)));
    }

    #[test]
    fn a_token_that_never_expires_needs_nothing() {
        let lease = Lease::new(Instant::now(), Duration::ZERO, true);
        assert_eq!(lease.next(), Next::Nothing);
        assert_eq!(lease.expires(), None);
        assert!(!lease.spent(Instant::now() + secs(1_000_000)));
    }

    #[test]
    fn a_renewal_giving_the_same_lease_again_is_not_capped() {
        let t0 = Instant::now();
        let lease = Lease::new(t0, secs(60), true).renewed(t0 + secs(40), secs(60), true);
        assert!(!lease.capped);
        assert_eq!(lease.next(), Next::Renew(t0 + secs(80)));
    }

    #[test]
    fn a_renewal_giving_less_than_before_means_the_max_ttl_is_near_so_log_in_again() {
        let t0 = Instant::now();
        let lease = Lease::new(t0, secs(60), true).renewed(t0 + secs(40), secs(30), true);
        assert!(lease.capped);
        assert_eq!(lease.next(), Next::Relogin(t0 + secs(60)));
    }

    #[test]
    fn a_first_lookup_of_a_half_used_token_then_a_full_renewal_is_not_capped() {
        let t0 = Instant::now();
        let looked_up = Lease::new(t0, secs(20), true);
        let lease = looked_up.renewed(t0 + secs(13), secs(60), true);
        assert!(!lease.capped);
    }

    #[test]
    fn a_token_is_spent_in_the_last_tenth_of_its_lease() {
        let t0 = Instant::now();
        let lease = Lease::new(t0, secs(100), true);
        assert!(!lease.spent(t0 + secs(89)));
        assert!(lease.spent(t0 + secs(90)));
        assert!(lease.spent(t0 + secs(101)));
    }

    #[test]
    fn a_tiny_lease_is_not_planned_sooner_than_the_minimum_pause() {
        let t0 = Instant::now();
        let lease = Lease::new(t0, Duration::from_millis(300), true);
        assert_eq!(lease.next(), Next::Renew(t0 + MIN_PAUSE));
    }
}
