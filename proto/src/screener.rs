//! The Columbia Suicide Severity Rating Scale screener (C-SSRS, screen
//! version "since last contact" / past month), as a counsellor runs it in a
//! conversation. Its result is the contact's **assessed** risk: the only way
//! a contact's level goes down (triage only ever raises it).
//!
//! The six questions and their skip logic, as the scale prints them:
//! 1. Have you wished you were dead or wished you could go to sleep and not wake up?
//! 2. Have you had any actual thoughts of killing yourself?
//!    *If yes to 2, ask 3, 4 and 5; if no, go to 6.*
//! 3. Have you been thinking about how you might do this?
//! 4. Have you had these thoughts and had some intention of acting on them?
//! 5. Have you started to work out or worked out the details of how to kill
//!    yourself? Do you intend to carry out this plan?
//! 6. Have you ever done anything, started to do anything, or prepared to do
//!    anything to end your life? *If yes: was it within the past 3 months?*
//!
//! The scale's own triage (low: 1 or 2; moderate: 3, or 6 over 3 months
//! ago; high: 4, 5, or 6 in the past 3 months) maps onto the line's four
//! levels as [`ScreenerAnswers::level`] documents (ADR 0017).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::CounsellorId;
use crate::risk::RiskLevel;

/// The answers, with the skip logic in their types: questions 3–5 are
/// `Some` exactly when question 2 was answered yes; the recency of
/// behaviour is `Some` exactly when question 6 was answered yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreenerAnswers {
    /// 1. Wished to be dead.
    pub wish_dead: bool,
    /// 2. Actual thoughts of killing oneself.
    pub thoughts: bool,
    /// 3. Thought about how (method), asked only after yes to 2.
    #[serde(default)]
    pub method: Option<bool>,
    /// 4. Some intention of acting, asked only after yes to 2.
    #[serde(default)]
    pub intent: Option<bool>,
    /// 5. Worked out the details, intends to carry it out; only after yes to 2.
    #[serde(default)]
    pub plan: Option<bool>,
    /// 6. Ever done, started or prepared anything to end one's life.
    pub behaviour: bool,
    /// 6b. Within the past 3 months; asked only after yes to 6.
    #[serde(default)]
    pub behaviour_recent: Option<bool>,
}

/// Why a set of answers does not follow the screener's skip logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScreenerError {
    #[error("questions 3 to 5 are asked (and must be answered) only after yes to question 2")]
    SkipAfterThoughts,
    #[error("question 6b is asked (and must be answered) only after yes to question 6")]
    SkipAfterBehaviour,
}

impl ScreenerAnswers {
    /// Checks the skip logic.
    pub fn validate(&self) -> Result<(), ScreenerError> {
        let asked = [self.method, self.intent, self.plan];
        let all_answered = asked.iter().all(Option::is_some);
        let none_answered = asked.iter().all(Option::is_none);
        if (self.thoughts && !all_answered) || (!self.thoughts && !none_answered) {
            return Err(ScreenerError::SkipAfterThoughts);
        }
        if self.behaviour != self.behaviour_recent.is_some() {
            return Err(ScreenerError::SkipAfterBehaviour);
        }
        Ok(())
    }

    /// The line's level for these answers (assumed valid):
    /// - **imminent**: intent or a plan (4 or 5) *and* behaviour in the past
    ///   3 months — the scale's high risk with a recent act or preparation;
    /// - **high**: intent or a plan (4 or 5), or behaviour in the past 3 months;
    /// - **moderate**: thoughts of killing oneself (2), thoughts of how (3),
    ///   or behaviour longer ago;
    /// - **low**: at most a wish to be dead (1).
    pub fn level(&self) -> RiskLevel {
        let yes = |a: Option<bool>| a == Some(true);
        let intent_or_plan = self.thoughts && (yes(self.intent) || yes(self.plan));
        let recent = self.behaviour && yes(self.behaviour_recent);
        if intent_or_plan && recent {
            RiskLevel::Imminent
        } else if intent_or_plan || recent {
            RiskLevel::High
        } else if self.thoughts || self.behaviour {
            RiskLevel::Moderate
        } else {
            RiskLevel::Low
        }
    }
}

/// A screener run by a counsellor, as the contact record keeps it. Shown
/// next to triage's level; later messages raise the level from here again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreenerResult {
    pub answers: ScreenerAnswers,
    /// The level the answers give (the contact's level from then on).
    pub level: RiskLevel,
    /// The contact's level just before (triage's, or an earlier screener's).
    pub before: RiskLevel,
    pub by: CounsellorId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(
        wish_dead: bool,
        thoughts: bool,
        three: Option<(bool, bool, bool)>,
        behaviour: Option<bool>,
    ) -> ScreenerAnswers {
        ScreenerAnswers {
            wish_dead,
            thoughts,
            method: three.map(|t| t.0),
            intent: three.map(|t| t.1),
            plan: three.map(|t| t.2),
            behaviour: behaviour.is_some(),
            behaviour_recent: behaviour,
        }
    }

    #[test]
    fn levels_follow_the_scales_triage() {
        use RiskLevel::*;
        let cases = [
            (answers(false, false, None, None), Low),
            (answers(true, false, None, None), Low),
            (
                answers(true, true, Some((false, false, false)), None),
                Moderate,
            ),
            (
                answers(true, true, Some((true, false, false)), None),
                Moderate,
            ),
            (answers(false, false, None, Some(false)), Moderate),
            (answers(true, true, Some((true, true, false)), None), High),
            (answers(true, true, Some((false, false, true)), None), High),
            (answers(false, false, None, Some(true)), High),
            (
                answers(true, true, Some((true, true, true)), Some(true)),
                Imminent,
            ),
            (
                answers(true, true, Some((false, true, false)), Some(true)),
                Imminent,
            ),
            (
                answers(true, true, Some((true, true, true)), Some(false)),
                High,
            ),
        ];
        for (a, want) in cases {
            assert_eq!(a.validate(), Ok(()), "{a:?}");
            assert_eq!(a.level(), want, "{a:?}");
        }
    }

    #[test]
    fn the_skip_logic_is_enforced() {
        let mut a = answers(true, false, None, None);
        a.method = Some(true);
        assert_eq!(a.validate(), Err(ScreenerError::SkipAfterThoughts));
        let mut b = answers(true, true, Some((true, true, true)), None);
        b.plan = None;
        assert_eq!(b.validate(), Err(ScreenerError::SkipAfterThoughts));
        let mut c = answers(false, false, None, None);
        c.behaviour = true;
        assert_eq!(c.validate(), Err(ScreenerError::SkipAfterBehaviour));
        let mut d = answers(false, false, None, None);
        d.behaviour_recent = Some(false);
        assert_eq!(d.validate(), Err(ScreenerError::SkipAfterBehaviour));
    }

    #[test]
    fn answers_are_plain_json() {
        let a: ScreenerAnswers =
            serde_json::from_str(r#"{"wish_dead":true,"thoughts":false,"behaviour":false}"#)
                .unwrap();
        assert_eq!(a, answers(true, false, None, None));
    }
}
