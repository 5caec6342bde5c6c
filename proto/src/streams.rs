//! Stream, consumer and KV bucket names. Configurations live in
//! `nwd-runtime::bus`, which creates them idempotently at start.

/// Inbound traffic from the edge (gateway, chat): `nwd.v1.inbound.>`.
pub const INBOUND: &str = "INBOUND";
/// Contact events (messages, triage, assignment, resolution): `nwd.v1.contact.>`.
pub const CONTACTS: &str = "CONTACTS";
/// Everything we send out: `nwd.v1.outbound.>`.
pub const OUTBOUND: &str = "OUTBOUND";
/// Disclosures and other records kept long, never deleted: `nwd.v1.audit.>`.
pub const AUDIT: &str = "AUDIT";

/// Messages consumers could not handle, kept to inspect and replay:
/// `nwd.v1.deadletter.<consumer>`.
pub const DEADLETTER: &str = "DEADLETTER";

/// Every stream, in the order they are created.
pub const ALL: [&str; 5] = [INBOUND, CONTACTS, OUTBOUND, AUDIT, DEADLETTER];

/// Durable consumer names (one per service role; replicas share it).
pub mod consumers {
    pub const INTAKE_SMS: &str = "intake-sms";
    pub const INTAKE_RESOLVED: &str = "intake-resolved";
    pub const TRIAGE: &str = "triage";
    pub const ROUTER: &str = "router";
    pub const NOTIFIER_SEND: &str = "notifier-send";
    pub const NOTIFIER_STATUS: &str = "notifier-status";
    /// Intake: web-chat inputs → contact messages.
    pub const INTAKE_CHAT: &str = "intake-chat";
    /// Chat: assignments and resolutions → notes to chat sessions.
    pub const CHAT_NOTES: &str = "chat-notes";
    /// Intake: partner referrals → outreach contacts.
    pub const INTAKE_REFERRAL: &str = "intake-referral";
    /// Referrals service: outreach updates → Task status.
    pub const REFERRALS_STATUS: &str = "referrals-status";
    /// Notifier: Task status callbacks to partners.
    pub const NOTIFIER_PARTNER: &str = "notifier-partner";
}

/// KV buckets.
pub mod buckets {
    /// Contact state records, key = contact id. Written by compare-and-swap
    /// by the router and the escalator.
    pub const CONTACTS: &str = "contacts";
    /// Open thread per sender, key = [`crate::pseudonym::Pseudonymiser::thread_key`]
    /// (a keyed pseudonym, never the address). Intake-owned.
    pub const THREADS: &str = "threads";
    /// Counsellor presence, key = counsellor id. Dashboard writes, router reads.
    pub const PRESENCE: &str = "presence";
    /// Outbound send records (dedupe), key = outbound id. Notifier-owned.
    pub const SENDS: &str = "sends";
    /// Counsellor replies (dedupe of browser resends), key = the reply's
    /// derived outbound id. Dashboard-owned.
    pub const REPLIES: &str = "replies";
    /// The directory (key `current`, JSON), changeable at run time.
    pub const DIRECTORY: &str = "directory";
    /// Dashboard login sessions, key = a keyed hash of the cookie's session
    /// id (never the id itself). Dashboard-owned; entries expire with the
    /// bucket's max age, and logout deletes them.
    pub const SESSIONS: &str = "sessions";
    /// Partner referrals' closed-loop state ([`crate::referral::ReferralRecord`]),
    /// key = referral id. The gateway creates; the referrals service changes.
    pub const REFERRALS: &str = "referrals";

    /// Patient web-chat sessions ([`crate::chat::ChatSessionRecord`]), key
    /// = a keyed hash of the session token (never the token itself).
    /// Chat-owned; entries expire with the bucket's max age.
    pub const CHAT_SESSIONS: &str = "chat_sessions";

    /// Every bucket, in the order they are created.
    pub const ALL: [&str; 9] = [
        CONTACTS,
        THREADS,
        PRESENCE,
        SENDS,
        REPLIES,
        DIRECTORY,
        SESSIONS,
        REFERRALS,
        CHAT_SESSIONS,
    ];

    /// The stream behind bucket `name` (`KV_<name>`), for its storage figures.
    pub fn stream_of(name: &str) -> String {
        format!("KV_{name}")
    }
}
