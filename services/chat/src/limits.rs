//! Rate limits with words for the person: messages per minute per session,
//! new sessions per minute per client address.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use nwd_proto::ChatSessionId;

/// Burst of messages beyond the steady rate (a person pasting a few lines).
const MESSAGE_BURST: u32 = 10;
/// Burst of new sessions per address (a family sharing a connection).
const SESSION_BURST: u32 = 3;

fn quota(per_minute: NonZeroU32, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst.min(per_minute.get())).unwrap_or(per_minute);
    Quota::per_minute(per_minute).allow_burst(burst)
}

pub struct Limits {
    messages: DefaultKeyedRateLimiter<ChatSessionId>,
    sessions: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(messages_per_minute: NonZeroU32, sessions_per_minute: NonZeroU32) -> Self {
        Self {
            messages: RateLimiter::keyed(quota(messages_per_minute, MESSAGE_BURST)),
            sessions: RateLimiter::keyed(quota(sessions_per_minute, SESSION_BURST)),
        }
    }

    /// May this session send a message now?
    pub fn message(&self, session: &ChatSessionId) -> bool {
        self.messages.check_key(session).is_ok()
    }

    /// May this address open a new session now?
    pub fn new_session(&self, address: IpAddr) -> bool {
        self.sessions.check_key(&address.to_canonical()).is_ok()
    }

    /// Forgets keys whose budget is full again (run every minute).
    pub fn prune(&self) {
        self.messages.retain_recent();
        self.sessions.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_pass_and_then_each_key_is_held_alone() {
        let l = Limits::new(NonZeroU32::new(2).unwrap(), NonZeroU32::new(1).unwrap());
        let s = ChatSessionId::new();
        assert!(l.message(&s));
        assert!(l.message(&s));
        assert!(!l.message(&s), "beyond the burst of 2");
        assert!(
            l.message(&ChatSessionId::new()),
            "another session is not held"
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.new_session(a));
        assert!(!l.new_session(a));
        assert!(l.new_session("10.0.0.2".parse().unwrap()));
    }
}
