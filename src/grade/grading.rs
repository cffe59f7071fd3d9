//! How a stage grades answers, as a user writes it (`eval.grade`): a named preset or the
//! grader's numeric options themselves.
//!
//! * `"exact"` (default): [`GradeOptions::default`], numbers compare exactly.
//! * `"qwen"`: the two numeric rules of the Qwen2.5-Math evaluation toolkit the paper evaluates
//!   with (Section 4.1, "the evaluation pipeline of Yang et al. (2024a)"), as its
//!   `evaluate.py` calls `math_equal(pred, gt)` with the defaults `include_percentage=True,
//!   is_close=True` (`evaluation/grader.py`): every number matches within a relative 1e-4
//!   (`numeric_equal`, `isclose(rel_tol=1e-4)`), and a number also matches the reference ×100 or
//!   ÷100 (`is_numerical_equal`). The rest of east's grader stays as it is (see the module
//!   docs: extraction, normalisation and the structural rules differ from the toolkit's).
//! * `{ approximate = 1e-4, approximate_all = false, percent = true }`: the options one by one.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::GradeOptions;

/// The toolkit's relative tolerance (`numeric_equal` in `evaluation/grader.py`).
pub const QWEN_REL_TOL: f64 = 1e-4;

/// A named grading preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Numbers compare exactly (east's default).
    Exact,
    /// The Qwen2.5-Math toolkit's rules: every number within a relative 1e-4, and ×100 / ÷100.
    Qwen,
}

/// The grader's numeric options, one by one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NumericRules {
    /// `false`, or the relative tolerance within which a decimal matches
    /// ([`GradeOptions::approximate`]).
    #[serde(with = "tolerance")]
    pub approximate: Option<f64>,
    /// The tolerance covers every number, not only decimals ([`GradeOptions::approximate_all`]).
    pub approximate_all: bool,
    /// A number also matches the other side ×100 or ÷100 ([`GradeOptions::percent_rule`]).
    pub percent: bool,
}

impl Default for NumericRules {
    fn default() -> Self {
        let d = GradeOptions::default();
        NumericRules {
            approximate: d.approximate,
            approximate_all: d.approximate_all,
            percent: d.percent_rule,
        }
    }
}

/// `eval.grade`: a preset name or a table of [`NumericRules`]. Written back (in `eval.json`'s
/// `grading`) the way it was given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grading {
    Preset(Preset),
    Rules(NumericRules),
}

impl Default for Grading {
    fn default() -> Self {
        Grading::Preset(Preset::Exact)
    }
}

impl Grading {
    /// How a report names it: the preset's name, or the rules as JSON.
    pub fn label(&self) -> String {
        match self {
            Grading::Preset(Preset::Exact) => "exact".into(),
            Grading::Preset(Preset::Qwen) => "qwen".into(),
            Grading::Rules(r) => serde_json::to_string(r).expect("rules serialise"),
        }
    }

    /// Whether this is the `exact` preset (the default).
    pub fn is_exact(&self) -> bool {
        *self == Grading::Preset(Preset::Exact)
    }

    /// The numeric rules this grading stands for.
    pub fn rules(&self) -> NumericRules {
        match self {
            Grading::Preset(Preset::Exact) => NumericRules::default(),
            Grading::Preset(Preset::Qwen) => NumericRules {
                approximate: Some(QWEN_REL_TOL),
                approximate_all: true,
                percent: true,
            },
            Grading::Rules(r) => *r,
        }
    }

    /// The grader's options.
    pub fn options(&self) -> GradeOptions {
        let r = self.rules();
        GradeOptions {
            approximate: r.approximate,
            approximate_all: r.approximate_all,
            percent_rule: r.percent,
            ..GradeOptions::default()
        }
    }

    /// Range checks: `(key, message)` of the first bad option.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let r = self.rules();
        match r.approximate {
            Some(tol) if !(tol > 0.0 && tol < 1.0) => Err((
                "approximate",
                format!("must be false or a relative tolerance in (0, 1), got {tol}"),
            )),
            None if r.approximate_all => Err((
                "approximate_all",
                "has no effect without a tolerance: set approximate too".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl Serialize for Grading {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Grading::Preset(p) => p.serialize(s),
            Grading::Rules(r) => r.serialize(s),
        }
    }
}

/// A string is a preset, a table the rules; anything else, or an unknown preset or rule, is an
/// error that lists what is accepted.
impl<'de> Deserialize<'de> for Grading {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Table(toml::Table),
        }
        let expected = "\"exact\", \"qwen\" or a table { approximate = 1e-4, approximate_all = \
                        false, percent = true }";
        match Raw::deserialize(d).map_err(|_| D::Error::custom(format!("expected {expected}")))? {
            Raw::Name(name) => match name.as_str() {
                "exact" => Ok(Grading::Preset(Preset::Exact)),
                "qwen" => Ok(Grading::Preset(Preset::Qwen)),
                other => Err(D::Error::custom(format!(
                    "unknown grading preset `{other}`: expected {expected}"
                ))),
            },
            Raw::Table(t) => NumericRules::deserialize(toml::Value::Table(t))
                .map(Grading::Rules)
                .map_err(|e| D::Error::custom(format!("{}; expected {expected}", e.message()))),
        }
    }
}

/// A tolerance in TOML/JSON: `false`, or the number.
mod tolerance {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_f64(*v),
            None => s.serialize_bool(false),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Off(bool),
            Tol(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Off(false) => Ok(None),
            Raw::Off(true) => Err(D::Error::custom(
                "approximate = true names no tolerance: give one (the Qwen toolkit's is 1e-4)",
            )),
            Raw::Tol(t) => Ok(Some(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::is_equivalent;

    /// Pairs where east's `qwen` preset deliberately differs from the toolkit: its sympy reads
    /// `\pi` as a symbol (so no number equals `4\pi`), and its percent rule covers plain numbers
    /// only, where east's covers every number.
    const DIFFERENCES: [(&str, &str); 2] = [("12.566", "4\\pi"), ("\\frac{1}{2}", "50")];

    /// The `qwen` preset against the toolkit's own `math_equal` on pairs where it and exact
    /// grading differ (tests/fixtures/qwen_grading_reference.json, written by
    /// scripts/reference/qwen_grader_reference.py), and the pairs both still tell apart.
    #[test]
    fn the_qwen_preset_grades_as_the_toolkits_math_equal() {
        let fx: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/qwen_grading_reference.json"
        ))
        .unwrap();
        let qwen = Grading::Preset(Preset::Qwen).options();
        let exact = Grading::default().options();
        let cases = fx["cases"].as_array().unwrap();
        assert!(cases.len() >= 15);
        let (mut accepted, mut differences) = (0, 0);
        for c in cases {
            let (pred, reference) = (c["pred"].as_str().unwrap(), c["ref"].as_str().unwrap());
            let toolkit = c["math_equal"].as_bool().unwrap();
            let got = is_equivalent(pred, reference, &qwen);
            if DIFFERENCES.contains(&(pred, reference)) {
                assert_eq!(
                    got, !toolkit,
                    "{pred} vs {reference}: a documented difference"
                );
                differences += 1;
                continue;
            }
            assert_eq!(
                got, toolkit,
                "{pred} vs {reference}: toolkit says {toolkit}"
            );
            if toolkit {
                accepted += 1;
                assert!(
                    !is_equivalent(pred, reference, &exact),
                    "{pred} vs {reference}: exact grading differs here"
                );
            }
        }
        assert_eq!(differences, DIFFERENCES.len());
        assert!(accepted >= 10, "{accepted}");
    }

    fn parse(toml_value: &str) -> Result<Grading, String> {
        #[derive(Deserialize)]
        struct Holder {
            grade: Grading,
        }
        toml::from_str::<Holder>(&format!("grade = {toml_value}"))
            .map(|h| h.grade)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn presets_and_rules_read_and_write_back_as_given() {
        assert_eq!(parse("\"exact\""), Ok(Grading::Preset(Preset::Exact)));
        assert_eq!(parse("\"qwen\""), Ok(Grading::Preset(Preset::Qwen)));
        let rules = parse("{ approximate = 1e-3, percent = true }").unwrap();
        assert_eq!(
            rules,
            Grading::Rules(NumericRules {
                approximate: Some(1e-3),
                approximate_all: false,
                percent: true
            })
        );
        assert_eq!(serde_json::to_value(Grading::default()).unwrap(), "exact");
        assert_eq!(
            serde_json::to_value(rules).unwrap(),
            serde_json::json!({"approximate": 1e-3, "approximate_all": false, "percent": true})
        );
        let off = parse("{ percent = true }").unwrap();
        assert_eq!(serde_json::to_value(off).unwrap()["approximate"], false);
        // The qwen preset is these rules.
        let o = Grading::Preset(Preset::Qwen).options();
        assert_eq!(
            (o.approximate, o.approximate_all, o.percent_rule),
            (Some(1e-4), true, true)
        );
    }

    #[test]
    fn bad_gradings_are_clear_errors() {
        let e = parse("\"sympy\"").unwrap_err();
        assert!(
            e.contains("unknown grading preset `sympy`") && e.contains("\"qwen\""),
            "{e}"
        );
        let e = parse("{ tolerance = 1e-4 }").unwrap_err();
        assert!(e.contains("tolerance") && e.contains("approximate"), "{e}");
        let e = parse("{ approximate = true }").unwrap_err();
        assert!(e.contains("names no tolerance"), "{e}");
        let e = parse("3").unwrap_err();
        assert!(e.contains("expected \"exact\""), "{e}");
        let bad = parse("{ approximate = 2.0 }").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "approximate");
        let bad = parse("{ approximate_all = true }").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "approximate_all");
        assert_eq!(Grading::Preset(Preset::Qwen).validate(), Ok(()));
    }
}
