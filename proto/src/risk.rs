//! Risk levels and the result of triaging a message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How urgent a person's situation is. Ordered: `Low < Moderate < High < Imminent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    /// Questions, logistics, support, check-ins.
    Low,
    /// Thoughts of death without a plan, relapse, cravings with distress, withdrawal.
    Moderate,
    /// Intent or plan, means at hand, recent attempt, using again after detox or release.
    High,
    /// Attempt or overdose in progress, someone unresponsive, plan + means + now.
    Imminent,
}

impl RiskLevel {
    pub const ALL: [RiskLevel; 4] = [
        RiskLevel::Low,
        RiskLevel::Moderate,
        RiskLevel::High,
        RiskLevel::Imminent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Moderate => "moderate",
            RiskLevel::High => "high",
            RiskLevel::Imminent => "imminent",
        }
    }

    /// Contact risk only ratchets up: the higher of the two.
    #[must_use]
    pub fn ratchet(self, other: RiskLevel) -> RiskLevel {
        self.max(other)
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown risk level (expected imminent, high, moderate or low)")]
pub struct UnknownRiskLevel;

impl FromStr for RiskLevel {
    type Err = UnknownRiskLevel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(RiskLevel::Low),
            "moderate" => Ok(RiskLevel::Moderate),
            "high" => Ok(RiskLevel::High),
            "imminent" => Ok(RiskLevel::Imminent),
            _ => Err(UnknownRiskLevel),
        }
    }
}

/// Language of a message, as detected by triage (routing matches on it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    En,
    Es,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Es => "es",
        }
    }
}

/// One rule that fired, with where it matched (character offsets into the
/// original text). Never carries the matched text itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Stable rule id from the rulebook, e.g. `overdose.unresponsive`.
    pub rule: String,
    /// Human-readable label for counsellors, e.g. "Someone unresponsive".
    pub label: String,
    /// The level this rule argues for.
    pub level: RiskLevel,
    /// Character span `[start, end)` in the original message.
    pub start: usize,
    pub end: usize,
}

/// The result of triaging one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub level: RiskLevel,
    /// A score in `[0, 1]` that orders messages within a level.
    pub score: f32,
    pub reasons: Vec<Reason>,
    pub lang: Language,
    /// Version of the rulebook that produced this result.
    pub rulebook_version: String,
}

impl Assessment {
    /// Imminent results are broadcast to every available counsellor and
    /// trigger the automatic safety message.
    pub fn is_imminent(&self) -> bool {
        self.level == RiskLevel::Imminent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_ratchet() {
        assert!(RiskLevel::Low < RiskLevel::Moderate);
        assert!(RiskLevel::High < RiskLevel::Imminent);
        assert_eq!(RiskLevel::High.ratchet(RiskLevel::Low), RiskLevel::High);
        assert_eq!(
            RiskLevel::Low.ratchet(RiskLevel::Imminent),
            RiskLevel::Imminent
        );
        for l in RiskLevel::ALL {
            assert_eq!(l.as_str().parse::<RiskLevel>().unwrap(), l);
        }
    }
}
