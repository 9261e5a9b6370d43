//! Figures: each one a list of per-run values, reported as its median and
//! its spread (min-max), with the target it is held to.

use serde_json::{Value, json};

/// What a figure must reach.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    Below(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(limit) => value >= limit,
            Target::Below(limit) => value < limit,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::AtLeast(limit) => format!(">= {}", fmt(limit)),
            Target::Below(limit) => format!("< {}", fmt(limit)),
        }
    }
}

/// One line of the table: a measured quantity over several runs.
#[derive(Debug, Clone)]
pub struct Figure {
    pub item: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub runs: Vec<f64>,
    pub target: Option<Target>,
}

impl Figure {
    pub fn new(item: &'static str, name: impl Into<String>, unit: &'static str) -> Figure {
        Figure {
            item,
            name: name.into(),
            unit,
            runs: Vec::new(),
            target: None,
        }
    }

    pub fn target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    pub fn median(&self) -> f64 {
        median(&self.runs)
    }

    fn verdict(&self) -> &'static str {
        match self.target {
            None => "",
            Some(_) if self.runs.is_empty() => "n/a",
            Some(t) if t.met(self.median()) => "met",
            Some(_) => "MISSED",
        }
    }

    fn spread(&self) -> String {
        let (lo, hi) = min_max(&self.runs);
        format!("{}-{}", fmt(lo), fmt(hi))
    }

    pub fn json(&self) -> Value {
        let (min, max) = min_max(&self.runs);
        json!({
            "item": self.item,
            "name": self.name,
            "unit": self.unit,
            "median": self.median(),
            "min": min,
            "max": max,
            "runs": self.runs,
            "target": self.target.map(Target::describe),
            "verdict": self.verdict(),
        })
    }
}

/// The table as Markdown, ready for the README.
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| item | figure | median | spread (min-max) | runs | target | |\n\
         |------|--------|--------|------------------|------|--------|-|\n",
    );
    for f in figures {
        out.push_str(&format!(
            "| {} | {} | {} {} | {} | {} | {} | {} |\n",
            f.item,
            f.name,
            fmt(f.median()),
            f.unit,
            f.spread(),
            f.runs.len(),
            f.target.map(Target::describe).unwrap_or_default(),
            f.verdict(),
        ));
    }
    out
}

/// Three significant-ish digits, no noise.
pub fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Nearest-rank percentile; NaN for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}
