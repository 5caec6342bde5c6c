//! Login throttling, decided before any password hash is computed so that a
//! flood of guesses costs us almost nothing and cannot starve real logins of
//! the few argon2 checks that run at once.
//!
//! Four gates, cheapest first, per client address and per username:
//! 1. **Back-off**: after repeated failures, the next attempt must wait
//!    exponentially longer (1 s, 2 s, 4 s … up to a cap); a success forgives.
//! 2. **One check at a time**: while a password of a username is being
//!    checked, another attempt for it is refused at once (a flood for one
//!    user holds at most one of the argon2 slots).
//! 3. **Rate** (`governor`'s GCRA, keyed): so many attempts per minute with
//!    a small burst.
//!
//! A refusal carries how long to wait, for `Retry-After`. Keyed state is
//! bounded: governor's store is pruned by [`Throttle::prune`] (called every
//! minute), the back-off tables forget quiet keys and hold at most
//! [`MAX_KEYS`] each.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Burst allowed per username beyond its steady rate.
pub const USERNAME_BURST: u32 = 3;
/// Burst allowed per client address beyond its steady rate.
pub const ADDRESS_BURST: u32 = 10;
/// Failures of a username before back-off starts.
pub const USERNAME_FREE_FAILURES: u32 = 3;
/// Failures from an address before back-off starts (an office behind one
/// address shares it).
pub const ADDRESS_FREE_FAILURES: u32 = 10;
/// First back-off step; each further failure doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest back-off.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Most keys a back-off table holds; beyond it new keys are not tracked
/// (the rate limits still apply to them).
pub const MAX_KEYS: usize = 100_000;
/// Longest username kept as a key (longer ones are cut).
const MAX_USERNAME_KEY: usize = 128;

/// Why an attempt was refused: a bounded label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Backoff,
    Concurrent,
    AddressRate,
    UsernameRate,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Backoff => "backoff",
            Reason::Concurrent => "concurrent",
            Reason::AddressRate => "rate_limited_address",
            Reason::UsernameRate => "rate_limited_username",
        }
    }
}

/// A refused attempt: why, and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub reason: Reason,
    pub retry_after: Duration,
}

impl Refused {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        if self.retry_after.subsec_nanos() > 0 || secs == 0 {
            secs + 1
        } else {
            secs
        }
    }
}

/// Rates, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub per_username_per_minute: NonZeroU32,
    pub per_address_per_minute: NonZeroU32,
}

pub struct Throttle {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    by_username: DefaultKeyedRateLimiter<String>,
    address_strikes: Strikes<IpAddr>,
    username_strikes: Strikes<String>,
    checking: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

/// Holds a username's "being checked" mark; dropping it clears the mark.
#[derive(Debug)]
pub struct Checking {
    username: String,
    checking: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Checking {
    fn drop(&mut self) {
        lock(&self.checking).remove(&self.username);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn quota(per_minute: NonZeroU32, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst.min(per_minute.get())).unwrap_or(per_minute);
    Quota::per_minute(per_minute).allow_burst(burst)
}

/// The key a username is throttled under: trimmed, lower-case, cut short,
/// so `Ana ` and `ana` share one budget. Known or not, every username is
/// treated alike (nothing here tells whether it exists).
pub fn username_key(username: &str) -> String {
    let mut key = username.trim().to_lowercase();
    if key.len() > MAX_USERNAME_KEY {
        let mut cut = MAX_USERNAME_KEY;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        key.truncate(cut);
    }
    key
}

impl Throttle {
    pub fn new(rates: Rates) -> Self {
        Self {
            by_address: RateLimiter::keyed(quota(rates.per_address_per_minute, ADDRESS_BURST)),
            by_username: RateLimiter::keyed(quota(rates.per_username_per_minute, USERNAME_BURST)),
            address_strikes: Strikes::new(ADDRESS_FREE_FAILURES),
            username_strikes: Strikes::new(USERNAME_FREE_FAILURES),
            checking: Arc::default(),
        }
    }

    /// Lets an attempt through to the password check, or says why not. Keep
    /// the returned guard until the check is done.
    pub fn admit(
        &self,
        address: IpAddr,
        username: &str,
        now: Instant,
    ) -> Result<Checking, Refused> {
        let username = username_key(username);
        let waits = [
            self.address_strikes.wait(&address, now),
            self.username_strikes.wait(&username, now),
        ];
        if let Some(wait) = waits.into_iter().flatten().max() {
            return Err(Refused {
                reason: Reason::Backoff,
                retry_after: wait,
            });
        }
        let guard = {
            let mut checking = lock(&self.checking);
            if !checking.insert(username.clone()) {
                return Err(Refused {
                    reason: Reason::Concurrent,
                    retry_after: BACKOFF_BASE,
                });
            }
            Checking {
                username: username.clone(),
                checking: self.checking.clone(),
            }
        };
        let clock_now = self.by_address.clock().now();
        if let Err(not_until) = self.by_address.check_key(&address) {
            return Err(Refused {
                reason: Reason::AddressRate,
                retry_after: not_until.wait_time_from(clock_now),
            });
        }
        if let Err(not_until) = self.by_username.check_key(&username) {
            return Err(Refused {
                reason: Reason::UsernameRate,
                retry_after: not_until.wait_time_from(clock_now),
            });
        }
        Ok(guard)
    }

    /// Records a wrong password (or unknown user).
    pub fn failed(&self, address: IpAddr, username: &str, now: Instant) {
        self.address_strikes.strike(address, now);
        self.username_strikes.strike(username_key(username), now);
    }

    /// Records a successful login: its username and address start afresh.
    pub fn succeeded(&self, address: IpAddr, username: &str) {
        self.address_strikes.forgive(&address);
        self.username_strikes.forgive(&username_key(username));
    }

    /// Drops state that no longer limits anyone. Call every minute or so.
    pub fn prune(&self, now: Instant) {
        self.by_address.retain_recent();
        self.by_username.retain_recent();
        self.by_address.shrink_to_fit();
        self.by_username.shrink_to_fit();
        self.address_strikes.prune(now);
        self.username_strikes.prune(now);
    }

    /// Keys held (rate limiters and back-off tables), for a gauge.
    pub fn keys(&self) -> usize {
        self.by_address.len()
            + self.by_username.len()
            + self.address_strikes.len()
            + self.username_strikes.len()
    }
}

/// Consecutive failures per key and when the last one was.
struct Strikes<K> {
    free: u32,
    table: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: Hash + Eq> Strikes<K> {
    fn new(free: u32) -> Self {
        Self {
            free,
            table: Mutex::default(),
        }
    }

    /// The back-off after `failures` consecutive failures.
    fn backoff(&self, failures: u32) -> Duration {
        match failures.checked_sub(self.free) {
            None => Duration::ZERO,
            Some(doublings) => BACKOFF_BASE
                .saturating_mul(2u32.saturating_pow(doublings.min(16)))
                .min(BACKOFF_CAP),
        }
    }

    /// How long `key` must still wait, if at all.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let table = lock(&self.table);
        let (failures, last) = table.get(key)?;
        let until = *last + self.backoff(*failures);
        (until > now).then(|| until - now)
    }

    fn strike(&self, key: K, now: Instant) {
        let mut table = lock(&self.table);
        if table.len() >= MAX_KEYS && !table.contains_key(&key) {
            return;
        }
        let entry = table.entry(key).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
    }

    fn forgive(&self, key: &K) {
        lock(&self.table).remove(key);
    }

    fn prune(&self, now: Instant) {
        let mut table = lock(&self.table);
        table.retain(|_, (_, last)| now.saturating_duration_since(*last) < FORGET_AFTER);
        table.shrink_to_fit();
    }

    fn len(&self) -> usize {
        lock(&self.table).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_username: u32, per_address: u32) -> Throttle {
        Throttle::new(Rates {
            per_username_per_minute: NonZeroU32::new(per_username).unwrap(),
            per_address_per_minute: NonZeroU32::new(per_address).unwrap(),
        })
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn one_check_at_a_time_per_username() {
        let t = throttle(60, 60);
        let now = Instant::now();
        let first = t.admit(HOME, "ana", now).unwrap();
        let second = t.admit(AWAY, " ANA", now).unwrap_err();
        assert_eq!(second.reason, Reason::Concurrent);
        assert!(second.retry_after_secs() >= 1);
        assert!(t.admit(HOME, "ben", now).is_ok(), "other users go on");
        drop(first);
        assert!(t.admit(AWAY, "ana", now).is_ok());
    }

    #[test]
    fn the_rate_per_username_and_per_address_holds_with_a_retry_after() {
        let t = throttle(5, 1000);
        let now = Instant::now();
        for _ in 0..USERNAME_BURST {
            drop(t.admit(HOME, "ana", now).unwrap());
        }
        let refused = t.admit(AWAY, "ana", now).unwrap_err();
        assert_eq!(refused.reason, Reason::UsernameRate);
        // 5 a minute: the next one in about 12 s.
        assert!(
            (10..=12).contains(&refused.retry_after_secs()),
            "{refused:?}"
        );

        let t = throttle(1000, 30);
        for i in 0..ADDRESS_BURST {
            drop(t.admit(HOME, &format!("user{i}"), now).unwrap());
        }
        let refused = t.admit(HOME, "someone-else", now).unwrap_err();
        assert_eq!(refused.reason, Reason::AddressRate);
        assert!(t.admit(AWAY, "someone-else", now).is_ok());
    }

    #[test]
    fn repeated_failures_back_off_exponentially_and_a_success_forgives() {
        let t = throttle(1000, 1000);
        let start = Instant::now();
        for _ in 0..USERNAME_FREE_FAILURES - 1 {
            t.failed(HOME, "ana", start);
        }
        assert!(t.admit(HOME, "ana", start).is_ok(), "a few typos are free");
        let mut waits = Vec::new();
        for _ in 0..4 {
            t.failed(HOME, "ana", start);
            let refused = t.admit(AWAY, "ana", start).unwrap_err();
            assert_eq!(refused.reason, Reason::Backoff);
            waits.push(refused.retry_after_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8]);
        assert!(t.admit(AWAY, "ana", start + Duration::from_secs(8)).is_ok());
        for _ in 0..40 {
            t.failed(HOME, "ben", start);
        }
        let capped = t.admit(AWAY, "ben", start).unwrap_err();
        assert_eq!(capped.retry_after, BACKOFF_CAP);
        t.succeeded(AWAY, "ben");
        assert!(t.admit(AWAY, "ben", start).is_ok());
    }

    #[test]
    fn an_address_backs_off_after_more_failures_than_a_username() {
        let t = throttle(1000, 1000);
        let now = Instant::now();
        for i in 0..ADDRESS_FREE_FAILURES {
            t.failed(HOME, &format!("user{i}"), now);
        }
        let refused = t.admit(HOME, "fresh", now).unwrap_err();
        assert_eq!(refused.reason, Reason::Backoff);
        assert!(t.admit(AWAY, "fresh", now).is_ok());
    }

    #[test]
    fn pruning_forgets_quiet_keys() {
        let t = throttle(5, 30);
        let now = Instant::now();
        for i in 0..50 {
            t.failed(HOME, &format!("user{i}"), now);
        }
        assert!(t.keys() >= 51);
        t.prune(now + FORGET_AFTER);
        assert_eq!(t.address_strikes.len() + t.username_strikes.len(), 0);
    }

    #[test]
    fn usernames_are_keyed_alike_and_cut_short() {
        assert_eq!(username_key("  Ana "), "ana");
        assert_eq!(username_key(&"é".repeat(200)).len(), MAX_USERNAME_KEY);
    }
}
