//! The contract between No Wrong Door services.
//!
//! Every event that crosses NATS is a struct here, wrapped in an [`Envelope`];
//! every subject, stream and bucket name is built by a function in
//! [`subjects`] or a constant in [`streams`]. Services depend on this crate and
//! never on each other. A breaking change to an event bumps the subject
//! version token (`v1` → `v2`).

pub mod address;
pub mod chat;
pub mod contact;
pub mod dashboard;
pub mod deadletter;
pub mod directory;
pub mod envelope;
pub mod events;
pub mod handover;
pub mod ids;
pub mod ladder;
pub mod phone;
pub mod pseudonym;
pub mod referral;
pub mod risk;
pub mod router;
pub mod screener;
pub mod streams;
pub mod subjects;
pub mod wire;

pub use address::{Address, AddressKind};
pub use envelope::{Envelope, Event};
pub use ids::{
    ChatSessionId, ClientReplyId, ContactId, CounsellorId, EventId, MessageId, MessageSid,
    OutboundId, PartnerId, ReferralId,
};
pub use phone::PhoneNumber;
pub use pseudonym::Pseudonymiser;
pub use risk::{Assessment, Language, Reason, RiskLevel};
