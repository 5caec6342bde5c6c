//! The router's pure decisions. Who may be offered a contact, the queue
//! order and the ladder live in `nwd-ladder` (shared with the escalator);
//! what is left here is how a refused command shows on a screen.

use nwd_proto::contact::TransitionError;
use nwd_proto::dashboard::WithdrawReason;

pub use nwd_ladder::floor::{Floor, is_available};

/// What the counsellor's screen should do with an offer a command failed on.
pub fn withdraw_reason(e: &TransitionError) -> WithdrawReason {
    match e {
        TransitionError::Taken => WithdrawReason::Taken,
        TransitionError::Resolved => WithdrawReason::Resolved,
        TransitionError::NotOffered
        | TransitionError::NotAssigned
        | TransitionError::NotOutreach
        | TransitionError::Screener(_)
        | TransitionError::TransferPending
        | TransitionError::NobodyToTransferTo
        | TransitionError::NotLeft => WithdrawReason::Expired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_withdraw_reasons() {
        assert_eq!(
            withdraw_reason(&TransitionError::Taken),
            WithdrawReason::Taken
        );
        assert_eq!(
            withdraw_reason(&TransitionError::Resolved),
            WithdrawReason::Resolved
        );
        assert_eq!(
            withdraw_reason(&TransitionError::NotOffered),
            WithdrawReason::Expired
        );
    }
}
