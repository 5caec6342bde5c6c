//! Requests the dashboard makes of the router (core NATS request/reply on
//! [`crate::subjects::router_command`], queue group `router`). The router
//! answers only after the contact record is durably changed.

use serde::{Deserialize, Serialize};

use crate::envelope::Event;
use crate::ids::{ContactId, CounsellorId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RouterCommand {
    Accept {
        contact_id: ContactId,
        counsellor: CounsellorId,
    },
    Decline {
        contact_id: ContactId,
        counsellor: CounsellorId,
    },
    Resolve {
        contact_id: ContactId,
        counsellor: CounsellorId,
        disposition: Option<String>,
    },
}

impl Event for RouterCommand {
    const TYPE: &'static str = "router.command";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RouterReply {
    Done,
    /// Refused with a reason a counsellor can read ("already taken").
    Refused {
        reason: String,
    },
}

impl Event for RouterReply {
    const TYPE: &'static str = "router.reply";
}
