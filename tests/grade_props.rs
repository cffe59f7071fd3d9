//! Robustness of grading on untrusted input: arbitrary strings and adversarial nesting must not
//! panic, overflow the stack or run long.

use std::time::{Duration, Instant};

use east::grade::{
    extract_answer, gsm8k_reference, is_equivalent, math_reference, strip_string, Answer,
    GradeOptions,
};
use proptest::prelude::*;

/// Generous per-input bound: real inputs take microseconds; this only catches blow-ups.
const LIMIT: Duration = Duration::from_secs(2);

const FRAGMENTS: &[&str] = &[
    "\\boxed{",
    "\\fbox{",
    "\\boxed ",
    "{",
    "}",
    "\\{",
    "\\}",
    "\\frac",
    "\\dfrac",
    "\\sqrt",
    "\\sqrt[",
    "[",
    "]",
    "^",
    "_",
    "(",
    ")",
    ",",
    "=",
    "-",
    "+",
    "*",
    "/",
    "!",
    "|",
    "&",
    "\\\\",
    ".",
    "0",
    "1",
    "2",
    "9",
    "12",
    "1,234",
    "3.5",
    "x",
    "y",
    "a",
    "i",
    "e",
    "\\pi",
    "\\infty",
    "\\pm",
    "\\cup",
    "\\cdot",
    "\\times",
    "\\div",
    "\\left(",
    "\\right)",
    "\\text{",
    "\\mbox{",
    "\\begin{pmatrix}",
    "\\end{pmatrix}",
    "\\sin",
    "\\log_",
    "\\binom",
    "\\lfloor",
    "\\rfloor",
    "%",
    "$",
    "^\\circ",
    " ",
    "\n",
    "The answer is ",
    "answer is:",
    "and",
    "or",
    "five",
    "é",
    "π",
    "√",
    "😀",
    "\\",
    "10^{",
    "99999999999999999999",
    "-\\infty",
    "\\emptyset",
    "\\mathbb{R}",
    "52_8",
    "dollars",
    // issue 17 syntax
    "\\overline{",
    "0.\\overline{6}",
    "\\setminus",
    "\\le",
    "\\ge",
    "<",
    ">",
    "≤",
    "−",
    "×",
    "∞",
    "e-4",
    "3.5e",
    "\\%",
    "\\textnormal{",
    "~",
    "$",
    "\\(",
    "\\)",
    "\\[",
    "\\]",
    "**Final Answer:** ",
    "Answer:",
    "\\boxed{1}, \\boxed{2}",
    " and \\boxed{",
    "(a,b)=",
    "a=",
    "x=",
    "\\frac{10}{3+i}",
];

fn latexish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..60).prop_map(|v| v.concat())
}

fn check(s: &str) {
    let opts = GradeOptions::default();
    let t = Instant::now();
    let _ = extract_answer(s);
    let _ = gsm8k_reference(s);
    let _ = math_reference(s);
    let n = strip_string(s);
    let a = Answer::parse(s);
    assert_eq!(a.normalized, n);
    let b = Answer::parse("\\frac{1}{2}");
    let ab = a.equivalent(&b, &opts);
    assert_eq!(ab, b.equivalent(&a, &opts), "asymmetric on {s:?}");
    assert!(a.equivalent(&a, &opts), "not reflexive on {s:?}");
    let _ = is_equivalent(s, "x^2+1", &opts);
    let _ = is_equivalent(s, "(1,2]", &opts);
    let _ = is_equivalent(s, s, &opts);
    let _ = a.as_f64();
    assert!(t.elapsed() < LIMIT, "slow on {} bytes", s.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_are_safe(s in "\\PC{0,300}") {
        check(&s);
    }

    #[test]
    fn latex_fragments_are_safe(s in latexish()) {
        check(&s);
    }

    #[test]
    fn pairs_of_fragments_compare_symmetrically(a in latexish(), b in latexish()) {
        let opts = GradeOptions::default();
        let (x, y) = (Answer::parse(&a), Answer::parse(&b));
        prop_assert_eq!(x.equivalent(&y, &opts), y.equivalent(&x, &opts));
    }

    #[test]
    fn boxed_content_is_extracted(n in -1_000_000i64..1_000_000, pre in "[a-z .,]{0,40}") {
        let c = format!("{pre} so the result is \\boxed{{{n}}}.");
        let got = extract_answer(&c).unwrap();
        prop_assert_eq!(got, n.to_string());
    }

    #[test]
    fn boxed_parts_form_one_set_answer(v in prop::collection::vec(-50i64..50, 2..6)) {
        let opts = GradeOptions::default();
        let boxes: Vec<String> = v.iter().map(|n| format!("\\boxed{{{n}}}")).collect();
        let pred = extract_answer(&format!("The values are {}.", boxes.join(", "))).unwrap();
        let mut sorted = v.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let reference: Vec<String> = sorted.iter().rev().map(i64::to_string).collect();
        if sorted.len() > 1 {
            prop_assert!(is_equivalent(&pred, &reference.join(", "), &opts), "{pred} vs {reference:?}");
            prop_assert!(!is_equivalent(&pred, &reference[0], &opts));
        } else {
            prop_assert!(is_equivalent(&pred, &reference[0], &opts));
        }
    }

    #[test]
    fn multibyte_text_before_boxes_is_safe(pre in "[é😀 ,a-z]{0,80}", n in 0i64..100) {
        let c = format!("{pre}\\boxed{{{n}}}");
        prop_assert_eq!(extract_answer(&c), Some(n.to_string()));
        let c = format!("\\boxed{{1}}{pre}\\boxed{{{n}}}");
        let _ = extract_answer(&c);
    }

    #[test]
    fn repeating_digit_is_ninths(d in 1u32..9, k in 0u32..100) {
        // k.ddd… = k + d/9
        let opts = GradeOptions::default();
        let a = format!("{k}.\\overline{{{d}}}");
        let b = format!("\\frac{{{}}}{{9}}", 9 * k + d);
        prop_assert!(is_equivalent(&a, &b, &opts));
        let c = format!("\\frac{{{}}}{{9}}", 9 * k + d + 1);
        prop_assert!(!is_equivalent(&a, &c, &opts));
    }

    #[test]
    fn integers_equal_only_themselves(a in -100_000i64..100_000, b in -100_000i64..100_000) {
        let opts = GradeOptions::default();
        prop_assert_eq!(is_equivalent(&a.to_string(), &b.to_string(), &opts), a == b);
    }
}

fn timed<F: FnOnce()>(name: &str, f: F) {
    let t = Instant::now();
    f();
    assert!(t.elapsed() < LIMIT, "{name} took {:?}", t.elapsed());
}

#[test]
fn deep_braces() {
    let s = "{".repeat(100_000);
    timed("100k {", || check(&s));
    let s = "{".repeat(100_000) + &"}".repeat(100_000);
    timed("100k {}", || check(&s));
    let s = format!("\\boxed{{{}1{}}}", "{".repeat(100_000), "}".repeat(100_000));
    timed("boxed 100k {}", || {
        let got = extract_answer(&s).unwrap();
        assert_eq!(got.len(), 200_001);
        check(&s);
    });
}

#[test]
fn deep_fracs_and_roots() {
    for unit in [
        "\\frac{",
        "\\frac{1}{",
        "\\sqrt{",
        "\\sqrt[",
        "(",
        "[",
        "\\left(",
        "-",
        "^",
        "2^{",
        "\\text{",
        "|",
    ] {
        for n in [10, 63, 64, 65, 100, 1_000, 100_000] {
            let s = unit.repeat(n) + "1" + &"}".repeat(n);
            timed(unit, || check(&s));
        }
    }
    // nesting inside the length limit but beyond the depth limit: rejected quickly, no panic
    let s = "\\frac{".repeat(120) + &"1}{2}".repeat(120);
    timed("nested frac", || check(&s));
    let s = "(".repeat(400) + "1" + &")".repeat(400);
    timed("nested parens", || {
        assert!(Answer::parse(&s).as_f64().is_none());
    });
    // within the depth limit it evaluates
    let s = "(".repeat(10) + "1" + &")".repeat(10);
    assert_eq!(Answer::parse(&s).as_f64(), Some(1.0));
}

#[test]
fn huge_numbers_and_powers() {
    for s in [
        "10^{10^{10}}",
        "2^{2^{2^{2^{2^{2}}}}}",
        "9^9^9^9^9",
        "99999999999999999999999999999999999999999999999999",
        "1000000!",
        "\\binom{100000}{50000}",
        "(10^{300})^{10}",
        "\\frac{1}{10^{-400}}",
        "0^{-1}",
        "\\sqrt[0]{2}",
        "\\sqrt[100000000000000000000]{2}",
    ] {
        timed(s, || check(s));
    }
}

#[test]
fn long_completions_extract_quickly() {
    let s = "Let us compute 12 + 30 = 42 step by step. ".repeat(100_000) + "\\boxed{42}";
    timed("4MB boxed", || {
        assert_eq!(extract_answer(&s).as_deref(), Some("42"))
    });
    let s = "\\boxed{".repeat(200_000);
    timed("200k unclosed boxes", || {
        assert_eq!(extract_answer(&s), None)
    });
    let s = "\\boxed{}".repeat(200_000);
    timed("200k empty boxes", || assert_eq!(extract_answer(&s), None));
    let s = "the answer is ".repeat(200_000);
    timed("200k answer is", || assert_eq!(extract_answer(&s), None));
    let s = "1,".repeat(500_000) + "5";
    timed("1M number run", || {
        assert_eq!(extract_answer(&s).as_deref(), Some("5"))
    });
    let s = "é".repeat(500_000) + "7" + &"ü".repeat(500_000);
    timed("multibyte", || {
        assert_eq!(extract_answer(&s).as_deref(), Some("7"))
    });
}

#[test]
fn long_answers_are_string_compared() {
    let opts = GradeOptions::default();
    let a = "1+".repeat(5_000) + "1";
    let b = "2+".repeat(2_500) + "1";
    timed("long sums", || {
        assert!(is_equivalent(&a, &a, &opts));
        // both are 5001 as numbers but beyond the parse limit: string comparison only
        assert!(!is_equivalent(&a, &b, &opts));
        assert!(Answer::parse(&a).as_f64().is_none());
    });
    let list = (0..400)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let rev = (0..400)
        .rev()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    timed("long lists", || {
        let _ = is_equivalent(&list, &rev, &opts);
    });
    let nested = "\\{".repeat(8) + "1,2,3,4,5,6,7,8" + &"\\}".repeat(8);
    timed("nested sets", || check(&nested));
}

/// Throughput sanity check (not a timed assertion): run with
/// `cargo test --release --test grade_props -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/math/test.jsonl");
    let sols: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["solution"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // completions of ~2k characters: a solution padded with reasoning text
    let pad = "We check each step carefully and then simplify the expression. ".repeat(20);
    let comps: Vec<String> = sols.iter().map(|s| format!("{pad}{s}")).collect();
    let bytes: usize = comps.iter().map(String::len).sum();
    let t = Instant::now();
    let answers: Vec<String> = comps.iter().filter_map(|c| extract_answer(c)).collect();
    let dt = t.elapsed();
    println!(
        "extract_answer: {} completions ({:.0} chars avg) in {:?}: {:.2} µs each",
        comps.len(),
        bytes as f64 / comps.len() as f64,
        dt,
        dt.as_secs_f64() * 1e6 / comps.len() as f64
    );
    let t = Instant::now();
    let normalized: Vec<String> = answers.iter().map(|a| strip_string(a)).collect();
    let dt = t.elapsed();
    println!(
        "strip_string: {} answers: {:.2} µs each ({:.0} chars avg)",
        normalized.len(),
        dt.as_secs_f64() * 1e6 / normalized.len() as f64,
        answers.iter().map(String::len).sum::<usize>() as f64 / answers.len() as f64
    );
    let t = Instant::now();
    let parsed: Vec<Answer> = answers.iter().map(|a| Answer::parse(a)).collect();
    let dt = t.elapsed();
    println!(
        "Answer::parse: {} answers: {:.2} µs each",
        parsed.len(),
        dt.as_secs_f64() * 1e6 / parsed.len() as f64
    );
    let opts = GradeOptions::default();
    let t = Instant::now();
    let mut n = 0usize;
    for (i, a) in parsed.iter().enumerate() {
        for b in &parsed[i + 1..(i + 33).min(parsed.len())] {
            n += usize::from(a.equivalent(b, &opts));
        }
    }
    let pairs = parsed.len() * 32;
    println!(
        "equivalent: ~{pairs} pairs: {:.3} µs each ({n} equal)",
        t.elapsed().as_secs_f64() * 1e6 / pairs as f64
    );
    let long = "Let us think. ".repeat(150_000) + "\\boxed{42}";
    let t = Instant::now();
    let r = extract_answer(&long);
    println!(
        "extract_answer on {} MB: {:?} ({r:?})",
        long.len() / 1_000_000,
        t.elapsed()
    );
    let long = "We add 3 and 4 to get 7, then multiply by 2. ".repeat(50_000);
    let t = Instant::now();
    let r = extract_answer(&long);
    println!(
        "extract_answer on {} MB, no box (last-number path): {:?} ({r:?})",
        long.len() / 1_000_000,
        t.elapsed()
    );
    let long = "\\boxed{".repeat(300_000);
    let t = Instant::now();
    let r = extract_answer(&long);
    println!(
        "extract_answer on {} MB of unclosed boxes: {:?} ({r:?})",
        long.len() / 1_000_000,
        t.elapsed()
    );
    let long_ans = "x+".repeat(500_000) + "1";
    let t = Instant::now();
    let a = Answer::parse(&long_ans);
    println!(
        "Answer::parse on {} MB: {:?} ({} normalised bytes)",
        long_ans.len() / 1_000_000,
        t.elapsed(),
        a.normalized.len()
    );
}
