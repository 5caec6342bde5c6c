//! Evaluation figures shared by `triage-eval` and `triage-train`: the
//! confusion matrix and the targets.

use std::fmt::Write as _;

use nwd_proto::RiskLevel;

/// Counts of one evaluation.
#[derive(Debug, Default)]
pub struct Tally {
    /// confusion[true][predicted]
    pub confusion: [[usize; 4]; 4],
    pub lang_total: usize,
    pub lang_right: usize,
    pub hard_total: usize,
    pub hard_right: usize,
    pub hard_under: usize,
    pub unlabelled: usize,
}

/// A level's row/column in the confusion matrix.
pub fn idx(l: RiskLevel) -> usize {
    match l {
        RiskLevel::Low => 0,
        RiskLevel::Moderate => 1,
        RiskLevel::High => 2,
        RiskLevel::Imminent => 3,
    }
}

fn ratio(n: usize, d: usize) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "  n/a".to_owned(), |r| format!("{r:.3}"))
}

impl Tally {
    /// Labelled messages counted.
    pub fn total(&self) -> usize {
        self.confusion.iter().flatten().sum()
    }

    /// Adds one labelled prediction.
    pub fn add(&mut self, truth: RiskLevel, predicted: RiskLevel) {
        if let Some(cell) = self
            .confusion
            .get_mut(idx(truth))
            .and_then(|row| row.get_mut(idx(predicted)))
        {
            *cell += 1;
        }
    }

    /// The figures: under-triage, imminent+high at ≥ high,
    /// imminent recall, low predicted imminent, exact accuracy.
    pub fn figures(&self) -> Figures {
        let c = &self.confusion;
        let total = self.total();
        let under: usize = (0..4).map(|t| (0..t).map(|p| c[t][p]).sum::<usize>()).sum();
        let high_plus: usize = c[2].iter().sum::<usize>() + c[3].iter().sum::<usize>();
        let high_plus_hit = c[2][2] + c[2][3] + c[3][2] + c[3][3];
        let imminent: usize = c[3].iter().sum();
        let low: usize = c[0].iter().sum();
        let exact: usize = (0..4).map(|k| c[k][k]).sum();
        Figures {
            accuracy: ratio(exact, total),
            under_triage: ratio(under, total),
            high_plus_recall: ratio(high_plus_hit, high_plus),
            imminent_recall: ratio(c[3][3], imminent),
            low_as_imminent: ratio(c[0][3], low),
            imminent_precision: ratio(c[3][3], (0..4).map(|t| c[t][3]).sum()),
        }
    }

    /// The report `triage-eval` prints.
    pub fn report(&self, with_targets: bool) -> String {
        let c = &self.confusion;
        let total = self.total();
        let mut s = String::new();
        let names = ["low", "moderate", "high", "imminent"];
        let _ = writeln!(s, "labelled messages: {total}");
        if self.unlabelled > 0 {
            let _ = writeln!(s, "unlabelled (predictions only): {}", self.unlabelled);
        }
        let _ = writeln!(s, "\nconfusion matrix (rows = true, columns = predicted)");
        let _ = writeln!(
            s,
            "{:>10} {:>8} {:>8} {:>8} {:>8}",
            "", "low", "moderate", "high", "imminent"
        );
        for (t, name) in names.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:>10} {:>8} {:>8} {:>8} {:>8}",
                name, c[t][0], c[t][1], c[t][2], c[t][3]
            );
        }
        let _ = writeln!(
            s,
            "\n{:>10} {:>9} {:>9} {:>7}",
            "level", "precision", "recall", "n"
        );
        for (k, name) in names.iter().enumerate() {
            let predicted: usize = (0..4).map(|t| c[t][k]).sum();
            let actual: usize = c[k].iter().sum();
            let _ = writeln!(
                s,
                "{:>10} {:>9} {:>9} {:>7}",
                name,
                fmt_ratio(ratio(c[k][k], predicted)),
                fmt_ratio(ratio(c[k][k], actual)),
                actual
            );
        }
        let f = self.figures();
        let rows = [
            ("accuracy (exact level)", f.accuracy, None, false),
            (
                "under-triage rate (predicted < true)",
                f.under_triage,
                Some(0.03),
                false,
            ),
            (
                "imminent+high recall at >= high",
                f.high_plus_recall,
                Some(0.98),
                true,
            ),
            ("imminent recall", f.imminent_recall, Some(0.95), true),
            (
                "low predicted imminent",
                f.low_as_imminent,
                Some(0.10),
                false,
            ),
        ];
        let _ = writeln!(s);
        for (name, value, target, at_least) in rows {
            let verdict = match (with_targets, value, target) {
                (true, Some(v), Some(t)) => {
                    let ok = if at_least { v >= t } else { v <= t };
                    format!(
                        "  target {} {t:.2}  {}",
                        if at_least { ">=" } else { "<=" },
                        if ok { "PASS" } else { "FAIL" }
                    )
                }
                _ => String::new(),
            };
            let _ = writeln!(s, "{name:<40} {}{verdict}", fmt_ratio(value));
        }
        if self.lang_total > 0 {
            let _ = writeln!(
                s,
                "{:<40} {} (n={})",
                "language accuracy",
                fmt_ratio(ratio(self.lang_right, self.lang_total)),
                self.lang_total
            );
        }
        if self.hard_total > 0 {
            let _ = writeln!(
                s,
                "{:<40} {} (n={}, under-triaged {})",
                "hard cases: exact level",
                fmt_ratio(ratio(self.hard_right, self.hard_total)),
                self.hard_total,
                self.hard_under
            );
        }
        s
    }
}

/// The figures of one evaluation (`None`: nothing to divide by).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub accuracy: Option<f64>,
    pub under_triage: Option<f64>,
    pub high_plus_recall: Option<f64>,
    pub imminent_recall: Option<f64>,
    pub low_as_imminent: Option<f64>,
    /// Of the messages predicted imminent, the share that are.
    pub imminent_precision: Option<f64>,
}
