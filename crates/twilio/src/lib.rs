//! Twilio wire formats, shared by the gateway (which receives Twilio's
//! webhooks), the notifier (which calls Twilio's REST API) and the phone
//! simulator (which plays Twilio in development and tests).
//!
//! - [`signature`]: `X-Twilio-Signature` (HMAC-SHA1 over URL + sorted params),
//!   validated exactly as twilio-python 9.13.0 does, port quirks included.
//! - [`rest`]: the Messages resource (create, list and its filters and
//!   pages), Twilio's error body and the error codes we branch on.
//! - [`form`]: the forms Twilio posts (inbound SMS, status callback).
//! - [`callback`]: our `StatusCallback` URL, built by the notifier and read
//!   by the gateway.

pub mod callback;
pub mod form;
pub mod rest;
pub mod signature;

pub use callback::{STATUS_CALLBACK_PATH, status_callback_url};
pub use form::{InboundSmsForm, StatusCallbackForm, new_message_sid};
pub use rest::{ErrorResponse, MessageFilter, MessagePage, MessageResource, is_permanent};

/// The header Twilio signs webhooks with.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
/// The header Twilio puts on its *webhook* requests: one token per event,
/// the same on Twilio's retries of it. Twilio's REST API does not read it:
/// `POST …/Messages.json` has no idempotency key, so a repeated create is a
/// second SMS (see docs/adr/0004-exactly-once-sms.md for how the notifier
/// copes).
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
/// The REST API version in paths and forms.
pub const API_VERSION: &str = "2010-04-01";
