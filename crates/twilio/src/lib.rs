//! Twilio wire formats, shared by the gateway (which receives Twilio's
//! webhooks), the notifier (which calls Twilio's REST API) and the phone
//! simulator (which plays Twilio in development and tests).
//!
//! - [`signature`]: `X-Twilio-Signature` (HMAC-SHA1 over URL + sorted params),
//!   validated exactly as twilio-python 9.13.0 does, port quirks included.
//! - [`rest`]: the Messages resource and Twilio's error body.
//! - [`form`]: the forms Twilio posts (inbound SMS, status callback).

pub mod form;
pub mod rest;
pub mod signature;

pub use form::{InboundSmsForm, StatusCallbackForm, new_message_sid};
pub use rest::{ErrorResponse, MessageResource, is_permanent};

/// The header Twilio signs webhooks with.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
/// The header that makes a `POST …/Messages.json` idempotent.
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
/// The REST API version in paths and forms.
pub const API_VERSION: &str = "2010-04-01";
