//! The index against a naive model: a map of key → (due, token, set order),
//! popped by sorting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use nwd_timers::{DeadlineIndex, Due};
use proptest::prelude::*;
use time::OffsetDateTime;
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2026-03-01 12:00:00 UTC);

#[derive(Debug, Clone)]
enum Op {
    Set { key: u8, due: i64, token: u64 },
    Cancel { key: u8 },
    Pop { now: i64, max: usize },
    Get { key: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    // Few keys and a narrow time range: many replacements and equal due times.
    prop_oneof![
        5 => (0u8..24, 0i64..60, any::<u64>()).prop_map(|(key, due, token)| Op::Set { key, due, token }),
        2 => (0u8..24).prop_map(|key| Op::Cancel { key }),
        2 => (0i64..70, 0usize..6).prop_map(|(now, max)| Op::Pop { now, max }),
        1 => (0u8..24).prop_map(|key| Op::Get { key }),
    ]
}

#[derive(Default)]
struct Model {
    live: HashMap<String, (OffsetDateTime, u64, u64)>,
    order: u64,
}

impl Model {
    fn set(&mut self, key: &str, due: OffsetDateTime, token: u64) {
        self.order += 1;
        self.live.insert(key.to_owned(), (due, token, self.order));
    }
    fn pop_due(&mut self, now: OffsetDateTime, max: usize) -> Vec<Due> {
        let mut due: Vec<_> = self
            .live
            .iter()
            .filter(|(_, (d, _, _))| *d <= now)
            .map(|(k, (d, t, o))| (*d, *o, k.clone(), *t))
            .collect();
        due.sort();
        due.truncate(max);
        due.into_iter()
            .map(|(d, _, k, t)| {
                self.live.remove(&k);
                Due {
                    key: k,
                    due: d,
                    token: t,
                }
            })
            .collect()
    }
    fn next_due(&self) -> Option<OffsetDateTime> {
        self.live.values().map(|(d, _, _)| *d).min()
    }
}

fn at(secs: i64) -> OffsetDateTime {
    // Sub-second offsets too, so ordering is not only by whole seconds.
    T0 + time::Duration::milliseconds(secs * 250)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn behaves_like_the_naive_model(ops in proptest::collection::vec(op(), 0..300)) {
        let mut ix = DeadlineIndex::new();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Set { key, due, token } => {
                    let key = format!("contact-{key}");
                    ix.set(&key, at(due), token);
                    model.set(&key, at(due), token);
                }
                Op::Cancel { key } => {
                    let key = format!("contact-{key}");
                    ix.cancel(&key);
                    model.live.remove(&key);
                }
                Op::Pop { now, max } => {
                    prop_assert_eq!(ix.pop_due(at(now), max), model.pop_due(at(now), max));
                }
                Op::Get { key } => {
                    let key = format!("contact-{key}");
                    prop_assert_eq!(ix.get(&key), model.live.get(&key).map(|(d, t, _)| (*d, *t)));
                }
            }
            prop_assert_eq!(ix.len(), model.live.len());
            prop_assert_eq!(ix.is_empty(), model.live.is_empty());
            prop_assert_eq!(ix.next_due(), model.next_due());
        }
        // Draining everything gives the model's order.
        let far = at(1_000);
        prop_assert_eq!(ix.pop_due(far, usize::MAX), model.pop_due(far, usize::MAX));
        prop_assert!(ix.is_empty());
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Many keys, a few operations each: exercises heap compaction.
    #[test]
    fn compaction_keeps_the_model(seed_ops in proptest::collection::vec((0u16..2_000, 0i64..4_000, any::<bool>()), 0..6_000)) {
        let mut ix = DeadlineIndex::new();
        let mut model = Model::default();
        for (i, (key, due, cancel)) in seed_ops.into_iter().enumerate() {
            let key = format!("k{key}");
            if cancel && i % 3 == 0 {
                ix.cancel(&key);
                model.live.remove(&key);
            } else {
                ix.set(&key, at(due), i as u64);
                model.set(&key, at(due), i as u64);
            }
        }
        prop_assert_eq!(ix.len(), model.live.len());
        prop_assert_eq!(ix.next_due(), model.next_due());
        let mid = at(2_000);
        prop_assert_eq!(ix.pop_due(mid, usize::MAX), model.pop_due(mid, usize::MAX));
        let far = at(10_000);
        prop_assert_eq!(ix.pop_due(far, usize::MAX), model.pop_due(far, usize::MAX));
    }
}
