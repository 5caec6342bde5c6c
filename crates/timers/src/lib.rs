//! Durable deadlines for the escalation ladder (ADR 0006).
//!
//! The deadline of a contact's next ladder step lives **in the contact's KV
//! record**, written by the same compare-and-swap that decides the step, so
//! arming, replacing and cancelling a deadline cost no extra durable write and
//! can never disagree with the contact's state. Every escalator replica
//! watches the bucket (replaying the last value of every key on start) and
//! keeps a [`DeadlineIndex`]: at most one pending deadline per contact,
//! identified by `(key, token)`. A sweeper loop waits with
//! [`sleep_until_due`] and takes what is due with [`DeadlineIndex::pop_due`];
//! firing is again a compare-and-swap on the record that checks the token, so
//! two replicas firing the same deadline is harmless (the loser sees the token
//! changed).
//!
//! ```
//! use nwd_timers::DeadlineIndex;
//! use time::macros::datetime;
//!
//! let mut index = DeadlineIndex::new();
//! index.set("c1", datetime!(2026-01-01 12:00:30 UTC), 7);
//! index.set("c2", datetime!(2026-01-01 12:00:10 UTC), 3);
//! index.set("c1", datetime!(2026-01-01 12:00:05 UTC), 8); // the next step replaces step 7
//! let due = index.pop_due(datetime!(2026-01-01 12:00:20 UTC), 100);
//! assert_eq!(due.iter().map(|d| (d.key.as_str(), d.token)).collect::<Vec<_>>(),
//!            [("c1", 8), ("c2", 3)]);
//! assert!(index.is_empty());
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

/// A deadline taken out of the index by [`DeadlineIndex::pop_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub key: String,
    pub due: OffsetDateTime,
    pub token: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    due: OffsetDateTime,
    token: u64,
    /// Which heap entry is the live one for this key (lazy deletion).
    generation: u64,
}

/// Heap entries order by due time, then by insertion (earliest first).
type HeapEntry = Reverse<(OffsetDateTime, u64, Arc<str>)>;

/// The next pending deadline of every contact, earliest first.
///
/// A binary heap with lazy deletion plus a map from key to its live deadline:
/// `set`, `cancel` and popping one entry are O(log n) amortised, `get`,
/// `next_due` and `len` are O(1). Replaced and cancelled deadlines stay in the
/// heap as stale entries until they reach the top or the heap is compacted
/// (when stale entries outnumber live ones), so memory stays O(live entries).
///
/// Not thread-safe: the watcher and the sweeper share it behind a
/// `std::sync::Mutex` and hold the lock only for these calls (never across an
/// `.await`).
pub struct DeadlineIndex {
    live: HashMap<Arc<str>, Slot>,
    heap: BinaryHeap<HeapEntry>,
    next_generation: u64,
}

impl std::fmt::Debug for DeadlineIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineIndex")
            .field("len", &self.live.len())
            .field("heap_len", &self.heap.len())
            .field("next_due", &self.next_due())
            .finish()
    }
}

impl Default for DeadlineIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// Below this many stale heap entries the heap is never compacted.
const COMPACT_SLACK: usize = 1024;

impl DeadlineIndex {
    pub fn new() -> Self {
        Self {
            live: HashMap::new(),
            heap: BinaryHeap::new(),
            next_generation: 0,
        }
    }

    /// Sets the pending deadline of `key`, replacing any earlier one (whatever
    /// its due time or token).
    pub fn set(&mut self, key: &str, due: OffsetDateTime, token: u64) {
        let due = due.to_offset(time::UtcOffset::UTC);
        let generation = self.next_generation;
        self.next_generation += 1;
        let key: Arc<str> = match self.live.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        self.heap.push(Reverse((due, generation, key.clone())));
        self.live.insert(
            key,
            Slot {
                due,
                token,
                generation,
            },
        );
        self.settle();
    }

    /// Removes the pending deadline of `key`, if any.
    pub fn cancel(&mut self, key: &str) {
        if self.live.remove(key).is_some() {
            self.settle();
        }
    }

    /// The pending deadline of `key`: `(due, token)`.
    pub fn get(&self, key: &str) -> Option<(OffsetDateTime, u64)> {
        self.live.get(key).map(|s| (s.due, s.token))
    }

    /// The earliest pending deadline.
    pub fn next_due(&self) -> Option<OffsetDateTime> {
        // `settle` keeps the top of the heap live.
        self.heap.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Removes and returns up to `max` deadlines due at or before `now`,
    /// earliest first (equal due times in the order they were set).
    pub fn pop_due(&mut self, now: OffsetDateTime, max: usize) -> Vec<Due> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.heap.peek() {
                Some(Reverse((due, _, _))) if *due <= now => {}
                _ => break,
            }
            let Some(Reverse((due, _, key))) = self.heap.pop() else {
                break;
            };
            // The top is live (`settle`), so this removes its slot.
            if let Some(slot) = self.live.remove(&key) {
                out.push(Due {
                    key: key.to_string(),
                    due,
                    token: slot.token,
                });
            }
            self.settle();
        }
        out
    }

    /// Pending deadlines (one per key).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Drops stale entries from the top of the heap so that the top is live,
    /// and rebuilds the heap when stale entries outnumber live ones.
    fn settle(&mut self) {
        if self.heap.len() > 2 * self.live.len() + COMPACT_SLACK {
            let heap: Vec<HeapEntry> = self
                .live
                .iter()
                .map(|(k, s)| Reverse((s.due, s.generation, k.clone())))
                .collect();
            self.heap = BinaryHeap::from(heap);
            return;
        }
        while let Some(Reverse((_, generation, key))) = self.heap.peek() {
            if self
                .live
                .get(key)
                .is_some_and(|s| s.generation == *generation)
            {
                break;
            }
            self.heap.pop();
        }
    }
}

/// Why [`sleep_until_due`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The earliest deadline is due (or overdue).
    Due,
    /// Someone called `notify_one`/`notify_waiters` (a new, possibly earlier,
    /// deadline was set).
    Notified,
    /// `max_tick` passed with nothing due: the sweep of last resort.
    Tick,
}

/// Waits until the earliest deadline in `index` is due, `wake` is notified,
/// or `max_tick` has passed, whichever comes first.
///
/// The sweeper loop calls this, then `pop_due(now, ..)` after **every** wake
/// (whatever the reason): a wall-clock jump, a missed notification or a bug
/// elsewhere then costs at most `max_tick` of lateness. Writers call
/// `wake.notify_one()` after a `set` that makes the deadline the earliest
/// (`next_due` was later or `None`); a notification that arrives while nobody
/// waits is kept for the next call, so none is lost.
///
/// Deadlines are wall-clock instants (they are persisted and compared across
/// replicas), so the wait is computed from [`OffsetDateTime::now_utc`].
pub async fn sleep_until_due(
    index: &Mutex<DeadlineIndex>,
    wake: &Notify,
    max_tick: Duration,
) -> Wake {
    sleep_until_due_with_clock(index, wake, max_tick, OffsetDateTime::now_utc).await
}

/// [`sleep_until_due`] with an injected wall clock (for tests with a fake clock).
pub async fn sleep_until_due_with_clock(
    index: &Mutex<DeadlineIndex>,
    wake: &Notify,
    max_tick: Duration,
    now: impl Fn() -> OffsetDateTime,
) -> Wake {
    let notified = wake.notified();
    tokio::pin!(notified);
    // Registered before reading the index: a `set` + notify that happens
    // after the read below still wakes us.
    notified.as_mut().enable();
    let next = index
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .next_due();
    let (wait, reason) = match next {
        None => (max_tick, Wake::Tick),
        Some(due) => match Duration::try_from(due - now()) {
            // Overdue or due now (a negative difference fails to convert).
            Err(_) => return Wake::Due,
            Ok(d) if d.is_zero() => return Wake::Due,
            Ok(d) if d < max_tick => (d, Wake::Due),
            Ok(_) => (max_tick, Wake::Tick),
        },
    };
    tokio::select! {
        biased;
        () = &mut notified => Wake::Notified,
        () = tokio::time::sleep(wait) => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

    fn at(secs: i64) -> OffsetDateTime {
        T0 + time::Duration::seconds(secs)
    }

    fn keys(due: &[Due]) -> Vec<(&str, u64)> {
        due.iter().map(|d| (d.key.as_str(), d.token)).collect()
    }

    #[test]
    fn empty_index_has_nothing_due() {
        let mut ix = DeadlineIndex::new();
        assert!(ix.is_empty());
        assert_eq!(ix.len(), 0);
        assert_eq!(ix.next_due(), None);
        assert_eq!(ix.get("c1"), None);
        assert!(ix.pop_due(at(1_000), 10).is_empty());
        ix.cancel("nobody");
        assert!(ix.is_empty());
    }

    #[test]
    fn pops_due_entries_earliest_first_and_leaves_the_rest() {
        let mut ix = DeadlineIndex::new();
        ix.set("c3", at(30), 1);
        ix.set("c1", at(10), 2);
        ix.set("c2", at(20), 3);
        ix.set("c4", at(40), 4);
        assert_eq!(ix.len(), 4);
        assert_eq!(ix.next_due(), Some(at(10)));
        let due = ix.pop_due(at(30), 10);
        assert_eq!(keys(&due), [("c1", 2), ("c2", 3), ("c3", 1)]);
        assert_eq!(due[0].due, at(10));
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.next_due(), Some(at(40)));
        assert_eq!(ix.get("c4"), Some((at(40), 4)));
        assert_eq!(ix.get("c1"), None);
    }

    #[test]
    fn a_deadline_exactly_now_is_due() {
        let mut ix = DeadlineIndex::new();
        ix.set("c1", at(5), 1);
        assert!(
            ix.pop_due(at(5) - time::Duration::nanoseconds(1), 10)
                .is_empty()
        );
        assert_eq!(keys(&ix.pop_due(at(5), 10)), [("c1", 1)]);
    }

    #[test]
    fn pop_due_respects_max() {
        let mut ix = DeadlineIndex::new();
        for i in 0..10 {
            ix.set(&format!("c{i}"), at(i), i as u64);
        }
        assert_eq!(
            keys(&ix.pop_due(at(100), 3)),
            [("c0", 0), ("c1", 1), ("c2", 2)]
        );
        assert_eq!(ix.len(), 7);
        assert!(ix.pop_due(at(100), 0).is_empty());
        assert_eq!(ix.pop_due(at(100), 100).len(), 7);
        assert!(ix.is_empty());
    }

    #[test]
    fn set_replaces_the_earlier_deadline_of_the_key() {
        let mut ix = DeadlineIndex::new();
        ix.set("c1", at(10), 1);
        ix.set("c1", at(50), 2); // later: the old one must not fire at 10
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.next_due(), Some(at(50)));
        assert!(ix.pop_due(at(20), 10).is_empty());
        ix.set("c1", at(5), 3); // earlier again
        assert_eq!(ix.get("c1"), Some((at(5), 3)));
        assert_eq!(keys(&ix.pop_due(at(60), 10)), [("c1", 3)]);
        assert!(ix.is_empty());
        assert_eq!(ix.next_due(), None);
    }

    #[test]
    fn cancel_removes_only_that_key() {
        let mut ix = DeadlineIndex::new();
        ix.set("c1", at(10), 1);
        ix.set("c2", at(20), 2);
        ix.cancel("c1");
        assert_eq!(ix.get("c1"), None);
        assert_eq!(ix.next_due(), Some(at(20)));
        assert_eq!(keys(&ix.pop_due(at(100), 10)), [("c2", 2)]);
        // Set again after a cancel.
        ix.set("c1", at(1), 9);
        assert_eq!(keys(&ix.pop_due(at(100), 10)), [("c1", 9)]);
    }

    #[test]
    fn equal_due_times_pop_in_the_order_they_were_set() {
        let mut ix = DeadlineIndex::new();
        ix.set("b", at(1), 1);
        ix.set("a", at(1), 2);
        ix.set("c", at(1), 3);
        assert_eq!(keys(&ix.pop_due(at(1), 10)), [("b", 1), ("a", 2), ("c", 3)]);
    }

    #[test]
    fn offsets_are_compared_as_instants() {
        let mut ix = DeadlineIndex::new();
        let plus2 = time::UtcOffset::from_hms(2, 0, 0).unwrap();
        ix.set("east", at(20).to_offset(plus2), 1); // 12:00:20 UTC = 14:00:20 +02
        ix.set("utc", at(10), 2);
        assert_eq!(ix.next_due(), Some(at(10)));
        assert_eq!(ix.get("east").unwrap().0, at(20));
        assert_eq!(keys(&ix.pop_due(at(15), 10)), [("utc", 2)]);
    }

    #[test]
    fn rescheduling_one_key_many_times_keeps_the_heap_bounded() {
        let mut ix = DeadlineIndex::new();
        for i in 0..100_000u64 {
            ix.set("hot", at(10_000 - (i % 5_000) as i64), i);
        }
        ix.set("cold", at(1), 0);
        assert_eq!(ix.len(), 2);
        assert!(
            ix.heap.len() <= 2 * ix.len() + COMPACT_SLACK + 1,
            "{}",
            ix.heap.len()
        );
        assert_eq!(ix.get("hot"), Some((at(10_000 - 4_999), 99_999)));
        let due = ix.pop_due(at(100_000), 10);
        assert_eq!(keys(&due), [("cold", 0), ("hot", 99_999)]);
    }

    #[test]
    fn a_hundred_thousand_entries() {
        let mut ix = DeadlineIndex::new();
        let n = 100_000u64;
        // A scrambled order of due times.
        for i in 0..n {
            let k = (i * 7_919) % n;
            ix.set(&format!("c{k}"), at(k as i64), k);
        }
        assert_eq!(ix.len(), n as usize);
        // Cancel every tenth, reschedule every tenth+1 to later.
        for k in (0..n).step_by(10) {
            ix.cancel(&format!("c{k}"));
            ix.set(&format!("c{}", k + 1), at((n + k) as i64), k + 1);
        }
        let mut last = None;
        let mut count = 0;
        loop {
            let batch = ix.pop_due(at(10 * n as i64), 1_000);
            if batch.is_empty() {
                break;
            }
            for d in batch {
                assert!(last.is_none_or(|l| l <= d.due));
                last = Some(d.due);
                count += 1;
            }
        }
        assert_eq!(count, n - n / 10);
        assert!(ix.is_empty());
    }

    #[test]
    fn debug_shows_size_not_contents() {
        let mut ix = DeadlineIndex::new();
        ix.set("c1", at(1), 1);
        let s = format!("{ix:?}");
        assert!(s.contains("len: 1"), "{s}");
        assert!(!s.contains("c1"), "{s}");
    }

    // --- sleep_until_due -------------------------------------------------

    fn fixed_clock(t: OffsetDateTime) -> impl Fn() -> OffsetDateTime {
        move || t
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_at_the_next_due_time() {
        let ix = Mutex::new(DeadlineIndex::new());
        ix.lock().unwrap().set("c1", at(3), 1);
        let wake = Notify::new();
        let start = tokio::time::Instant::now();
        let why =
            sleep_until_due_with_clock(&ix, &wake, Duration::from_secs(60), fixed_clock(at(0)))
                .await;
        assert_eq!(why, Wake::Due);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn returns_at_once_when_overdue() {
        let ix = Mutex::new(DeadlineIndex::new());
        ix.lock().unwrap().set("c1", at(3), 1);
        let wake = Notify::new();
        let start = tokio::time::Instant::now();
        for now in [at(3), at(10)] {
            let why =
                sleep_until_due_with_clock(&ix, &wake, Duration::from_secs(60), fixed_clock(now))
                    .await;
            assert_eq!(why, Wake::Due);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_at_most_every_max_tick() {
        let ix = Mutex::new(DeadlineIndex::new());
        let wake = Notify::new();
        let start = tokio::time::Instant::now();
        // Empty index.
        let why =
            sleep_until_due_with_clock(&ix, &wake, Duration::from_secs(2), fixed_clock(at(0)))
                .await;
        assert_eq!(why, Wake::Tick);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Next deadline far away.
        ix.lock().unwrap().set("c1", at(3_600), 1);
        let why =
            sleep_until_due_with_clock(&ix, &wake, Duration::from_secs(2), fixed_clock(at(0)))
                .await;
        assert_eq!(why, Wake::Tick);
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_notification_interrupts_the_wait() {
        let ix = Arc::new(Mutex::new(DeadlineIndex::new()));
        ix.lock().unwrap().set("late", at(60), 1);
        let wake = Arc::new(Notify::new());
        let (ix2, wake2) = (ix.clone(), wake.clone());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ix2.lock().unwrap().set("early", at(2), 2);
            wake2.notify_one();
        });
        let start = tokio::time::Instant::now();
        let why =
            sleep_until_due_with_clock(&ix, &wake, Duration::from_secs(30), fixed_clock(at(0)))
                .await;
        assert_eq!(why, Wake::Notified);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        writer.await.unwrap();
        // The next wait is for the earlier deadline (clock now at 1 s).
        let why =
            sleep_until_due_with_clock(&ix, &wake, Duration::from_secs(30), fixed_clock(at(1)))
                .await;
        assert_eq!(why, Wake::Due);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_notification_sent_before_the_wait_is_not_lost() {
        let ix = Mutex::new(DeadlineIndex::new());
        let wake = Notify::new();
        wake.notify_one();
        let start = tokio::time::Instant::now();
        let why =
            sleep_until_due_with_clock(&ix, &wake, Duration::from_secs(30), fixed_clock(at(0)))
                .await;
        assert_eq!(why, Wake::Notified);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poisoned_lock_still_works() {
        let ix = Arc::new(Mutex::new(DeadlineIndex::new()));
        ix.lock().unwrap().set("c1", at(0), 1);
        let ix2 = ix.clone();
        let _ = std::thread::spawn(move || {
            let _guard = ix2.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(ix.is_poisoned());
        let wake = Notify::new();
        let why =
            sleep_until_due_with_clock(&ix, &wake, Duration::from_secs(30), fixed_clock(at(1)))
                .await;
        assert_eq!(why, Wake::Due);
    }

    #[tokio::test]
    async fn real_clock_wakes_for_a_deadline_just_ahead() {
        let ix = Mutex::new(DeadlineIndex::new());
        let due = OffsetDateTime::now_utc() + time::Duration::milliseconds(30);
        ix.lock().unwrap().set("c1", due, 1);
        let wake = Notify::new();
        let start = std::time::Instant::now();
        // The wall clock and tokio's monotonic clock may disagree by a few
        // microseconds: a sweeper loops until something is due.
        let fired = loop {
            let why = sleep_until_due(&ix, &wake, Duration::from_secs(5)).await;
            assert_eq!(why, Wake::Due);
            let fired = ix.lock().unwrap().pop_due(OffsetDateTime::now_utc(), 10);
            if !fired.is_empty() {
                break fired;
            }
        };
        assert_eq!(fired.len(), 1);
        assert!(OffsetDateTime::now_utc() >= due);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
