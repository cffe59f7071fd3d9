//! Grading: extraction, dataset references and equivalence, with expected values written by
//! hand from the mathematics.

use east::grade::{
    extract_answer, gsm8k_reference, is_equivalent, math_reference, strip_string, Answer,
    GradeOptions,
};

fn eq(a: &str, b: &str) -> bool {
    let o = GradeOptions::default();
    let r = is_equivalent(a, b, &o);
    // symmetric in intent
    assert_eq!(r, is_equivalent(b, a, &o), "asymmetric: {a:?} vs {b:?}");
    r
}

fn assert_eqv(a: &str, b: &str) {
    assert!(eq(a, b), "expected {a:?} ≡ {b:?}");
}

fn assert_neq(a: &str, b: &str) {
    assert!(!eq(a, b), "expected {a:?} ≢ {b:?}");
}

fn read_jsonl(rel: &str) -> Vec<serde_json::Value> {
    let path = format!("{}/{}", env!("CARGO_MANIFEST_DIR"), rel);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ------------------------------------------------------------------------------------ extraction

#[test]
fn extract_boxed_nested() {
    let c = "We simplify.\n\nThus $x = \\boxed{\\frac{3\\sqrt{2}}{4}}$.";
    assert_eq!(extract_answer(c).as_deref(), Some("\\frac{3\\sqrt{2}}{4}"));
    let c = "so the set is \\boxed{\\left\\{ 1, 2 \\right\\}}";
    assert_eq!(
        extract_answer(c).as_deref(),
        Some("\\left\\{ 1, 2 \\right\\}")
    );
}

#[test]
fn extract_multiple_boxes_takes_last() {
    let c = "First guess \\boxed{12}. Wait, recheck: the total is \\boxed{14}.";
    assert_eq!(extract_answer(c).as_deref(), Some("14"));
}

#[test]
fn extract_fbox() {
    assert_eq!(extract_answer("Answer: \\fbox{7}").as_deref(), Some("7"));
}

#[test]
fn extract_unclosed_box_falls_back() {
    // generation cut off inside the box: the earlier box wins
    assert_eq!(
        extract_answer("\\boxed{3} ... so \\boxed{\\frac{1}{").as_deref(),
        Some("3")
    );
    // no complete box at all: "the answer is", then last number
    assert_eq!(
        extract_answer("The answer is 8. \\boxed{8").as_deref(),
        Some("8")
    );
    assert_eq!(
        extract_answer("3 + 4 = 7 so \\boxed{").as_deref(),
        Some("7")
    );
}

#[test]
fn extract_the_answer_is() {
    assert_eq!(
        extract_answer("Adding them, the answer is 42.").as_deref(),
        Some("42")
    );
    assert_eq!(
        extract_answer("The answer is $18$.\nDone.").as_deref(),
        Some("$18$")
    );
}

#[test]
fn extract_last_number() {
    assert_eq!(
        extract_answer("He pays 3 * 4 = 12 dollars, then 1,250 more").as_deref(),
        Some("1250")
    );
    assert_eq!(
        extract_answer("so the temperature is -4.5 today").as_deref(),
        Some("-4.5")
    );
}

#[test]
fn extract_none() {
    assert_eq!(extract_answer("I don't know."), None);
    assert_eq!(extract_answer(""), None);
}

// ---------------------------------------------------------------------------------- datasets

#[test]
fn gsm8k_references_are_numbers() {
    for split in ["train", "test"] {
        let rows = read_jsonl(&format!("data/gsm8k/{split}.jsonl"));
        assert!(rows.len() > 1000);
        for r in &rows {
            let ans = r["answer"].as_str().unwrap();
            let gt = gsm8k_reference(ans).unwrap_or_else(|| panic!("no reference: {ans}"));
            assert!(
                gt.parse::<f64>().is_ok(),
                "{split}: {gt:?} is not a plain number"
            );
            let a = Answer::parse(&gt);
            assert!(
                a.as_f64().is_some(),
                "{split}: {gt:?} does not parse as a number"
            );
            // the reference is equivalent to itself written with thousands separators
            let v = a.as_f64().unwrap();
            assert!((v - gt.parse::<f64>().unwrap()).abs() <= 1e-9 * v.abs().max(1.0));
        }
    }
}

#[test]
fn math_references_exist() {
    for split in ["train", "test"] {
        let rows = read_jsonl(&format!("data/math/{split}.jsonl"));
        assert!(rows.len() > 1000);
        let mut empty = 0;
        for r in &rows {
            let sol = r["solution"].as_str().unwrap();
            let gt = math_reference(sol).unwrap_or_else(|| panic!("no reference in {sol}"));
            if gt.trim().is_empty() {
                empty += 1;
            }
        }
        // two train solutions end in an empty `\boxed{}` (a dataset quirk)
        assert_eq!(empty, if split == "train" { 2 } else { 0 }, "{split}");
    }
}

#[test]
fn math500_references_match_answer_field() {
    let rows = read_jsonl("data/math/test500.jsonl");
    assert_eq!(rows.len(), 500);
    let opts = GradeOptions::default();
    let mut string_equal = 0;
    let mut failures = Vec::new();
    for r in &rows {
        let sol = r["solution"].as_str().unwrap();
        let want = r["answer"].as_str().unwrap();
        let got = math_reference(sol).expect("reference");
        if strip_string(&got) == strip_string(want) {
            string_equal += 1;
        }
        if !is_equivalent(&got, want, &opts) || !is_equivalent(want, &got, &opts) {
            failures.push(format!("{}: {got:?} vs {want:?}", r["unique_id"]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 500 differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(string_equal > 400, "only {string_equal} equal as strings");
}

#[test]
fn math500_answers_are_not_all_equivalent_to_each_other() {
    // guards against a grader that says "yes" too easily: distinct answers of consecutive
    // problems must mostly differ
    let rows = read_jsonl("data/math/test500.jsonl");
    let opts = GradeOptions::default();
    let answers: Vec<Answer> = rows
        .iter()
        .map(|r| Answer::parse(r["answer"].as_str().unwrap()))
        .collect();
    let mut same = 0;
    for w in answers.windows(2) {
        if w[0].normalized != w[1].normalized && w[0].equivalent(&w[1], &opts) {
            same += 1;
        }
    }
    assert_eq!(same, 0);
}

// ------------------------------------------------------------------------------- equivalence

#[test]
fn fractions_and_decimals() {
    assert_eqv("\\frac{1}{2}", "0.5");
    assert_eqv("0.5", "\\dfrac12");
    assert_eqv("\\frac{1}{2}", "\\dfrac12");
    assert_eqv("1/2", "\\frac{1}{2}");
    assert_eqv("\\frac{14}{3}", "\\frac{28}{6}");
    // a rounded decimal is not the exact fraction (issue 17), unless `approximate` is on
    assert_neq("\\frac{3}{56}", "0.05357");
    let approx = GradeOptions {
        approximate: Some(1e-4),
        ..GradeOptions::default()
    };
    assert!(is_equivalent("\\frac{3}{56}", "0.05357", &approx));
    assert!(is_equivalent("0.05357", "\\frac{3}{56}", &approx));
    assert_neq("\\frac{1}{2}", "0.51");
    assert_neq("\\frac{1}{3}", "0.33");
}

#[test]
fn thousands_separators() {
    assert_eqv("1,234", "1234");
    assert_eqv("10,\\!080", "10080");
    assert_eqv("\\$32,\\!348", "32348");
    assert_eqv("11,\\! 111,\\! 111,\\! 100", "11111111100");
    assert_neq("1,234", "1235");
}

#[test]
fn percent_sign_dropped() {
    assert_eqv("50\\%", "50");
    assert_eqv("12.5%", "12.5");
    assert_neq("50\\%", "51");
}

#[test]
fn percent_rule_is_opt_in() {
    let off = GradeOptions::default();
    let on = GradeOptions {
        percent_rule: true,
        ..GradeOptions::default()
    };
    assert!(!is_equivalent("0.5", "50", &off));
    assert!(is_equivalent("0.5", "50", &on));
    assert!(is_equivalent("50", "0.5", &on));
    assert!(is_equivalent("5000", "50", &on));
    assert!(!is_equivalent("5", "50", &on));
}

#[test]
fn plain_numbers() {
    assert_eqv("5.00", "5");
    assert_eqv("3.0", "3");
    assert_eqv("-3", "-3.0");
    assert_eqv(".35625", "0.35625");
    assert_eqv("\\$18.90", "18.9");
    assert_neq("10", "11");
    assert_neq("-3", "3");
    // integers are exact even within the relative tolerance
    assert_neq("123456", "123457");
    // exact rationals compare exactly (issue 17); the toolkit's 1e-4 only with `approximate`
    assert_neq("1000.05", "1000");
    assert_neq("1.001", "1");
    let approx = GradeOptions {
        approximate: Some(1e-4),
        ..GradeOptions::default()
    };
    assert!(is_equivalent("1000.05", "1000", &approx));
    assert!(!is_equivalent("1.001", "1", &approx));
}

#[test]
fn radicals() {
    assert_eqv("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}");
    assert_eqv("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}");
    assert_eqv("3\\sqrt{13}", "\\sqrt{117}");
    assert_eqv("11\\sqrt2", "11 \\sqrt{2}");
    assert_eqv("2\\sqrt{5}", "\\sqrt{20}");
    assert_eqv("\\sqrt[3]{8}", "2");
    assert_neq("2\\sqrt{5}", "5\\sqrt{2}");
    assert_neq("\\sqrt{51}", "\\sqrt{50}");
}

#[test]
fn pi_and_implicit_products() {
    assert_eqv("2\\pi", "2 \\pi");
    assert_eqv("288 \\pi", "288\\pi");
    assert_eqv("\\frac{20000}{\\pi}", "20000/\\pi");
    assert_eqv("18+2\\pi", "2\\pi+18");
    assert_eqv("3\\cdot 4", "12");
    assert_eqv("3 \\times 4", "12");
    assert_eqv("12 \\div 4", "3");
    assert_eqv("-\\frac{\\pi}{6}", "\\frac{-\\pi}{6}");
    assert_neq("3.14", "\\pi");
    // a rounded π is not π (issue 17) unless `approximate` is on
    assert_neq("3.14159", "\\pi");
    let approx = GradeOptions {
        approximate: Some(1e-4),
        ..GradeOptions::default()
    };
    assert!(is_equivalent("3.14159", "\\pi", &approx));
    assert_neq("2\\pi", "\\pi");
}

#[test]
fn mixed_numbers() {
    assert_eqv("1\\frac{4}{5}", "\\frac{9}{5}");
    assert_eqv("137 \\frac{1}{2}", "137.5");
    assert_neq("1\\frac{4}{5}", "\\frac{4}{5}");
}

#[test]
fn tuples_are_ordered() {
    assert_eqv("(1,2)", "(1, 2)");
    assert_neq("(1,2)", "(2,1)");
    assert_eqv("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})");
    assert_eqv("(6,31,-1)", "(6, 31, -1)");
    assert_neq("(6,31,-1)", "(6,31,1)");
    assert_neq("(1,2)", "(1,2,3)");
    assert_eqv("(\\frac{3}{2}, -13)", "(1.5,-13)");
}

#[test]
fn sets_are_unordered() {
    assert_eqv("\\{1,2\\}", "\\{2,1\\}");
    assert_neq("\\{1,2\\}", "\\{1,3\\}");
    assert_eqv("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}");
    assert_neq("\\{1,2\\}", "(1,2)");
}

#[test]
fn bare_lists_are_unordered() {
    assert_eqv("1,-2", "-2, 1");
    assert_eqv("3, 5, 7", "7,5,3");
    assert_neq("3, 5, 7", "3, 5");
    assert_eqv("1 and 2", "1, 2");
}

#[test]
fn plus_minus() {
    assert_eqv("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}");
    assert_eqv("3 \\pm 2 \\sqrt{2}", "3-2\\sqrt2, 3+2\\sqrt2");
    assert_neq("1 \\pm \\sqrt{19}", "1+\\sqrt{19}");
}

#[test]
fn intervals_need_matching_brackets() {
    assert_neq("[0,1)", "[0,1]");
    assert_eqv("[0,1)", "[0, 1)");
    assert_eqv("(-\\infty, 0]", "(-\\infty,0]");
    assert_neq("(-\\infty, 0]", "(-\\infty, 0)");
    assert_eqv("(2,\\infty)", "(2, \\infty)");
    assert_neq("(2,\\infty)", "(2,-\\infty)");
    assert_eqv(
        "\\left(\\frac{3}{5},\\frac{8}{3}\\right]",
        "(0.6, \\frac{8}{3}]",
    );
    assert_eqv("x \\in [-2,7]", "[-2,7]");
    assert_eqv(
        "(-\\infty, 2) \\cup (3, \\infty)",
        "(3,\\infty)\\cup(-\\infty,2)",
    );
    assert_neq(
        "(-\\infty, 2) \\cup (3, \\infty)",
        "(-\\infty, 2] \\cup (3, \\infty)",
    );
}

#[test]
fn matrices() {
    assert_eqv(
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
        "\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}",
    );
    assert_eqv(
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}",
    );
    assert_neq(
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
    );
    // same entries, different shape
    assert_neq(
        "\\begin{pmatrix} 1 & 2 \\end{pmatrix}",
        "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
    );
    // a column vector and the tuple of its entries
    assert_eqv(
        "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}",
        "(-7,16,5)",
    );
}

#[test]
fn polynomials_and_expressions() {
    assert_eqv("x^2+2x+1", "(x+1)^2");
    assert_neq("x^2+2x+1", "(x-1)^2");
    assert_eqv("x^5 - x^4 + x^3 - x^2 + x - 1", "(x-1)(x^4+x^2+1)");
    assert_eqv("(a+5)(b+2)", "ab+2a+5b+10");
    assert_neq("(a+5)(b+2)", "(a+2)(b+5)");
    assert_eqv("\\frac{11+9a}{20}", "\\frac{11}{20}+\\frac{9a}{20}");
    assert_eqv("2k+2", "2(k+1)");
    assert_neq("2k+2", "2k+1");
    assert_eqv("6 - 5i", "-5i+6");
    assert_neq("6 - 5i", "6 + 5i");
    assert_eqv("\\cot x", "\\frac{\\cos x}{\\sin x}");
    assert_neq("x+1", "y+1");
    assert_neq("x", "5");
}

#[test]
fn equations() {
    assert_eqv("y = 2x + 3", "2x+3");
    assert_eqv("x=5", "5");
    assert_eqv("5x - 7y + 11z + 4 = 0", "-5x + 7y - 11z - 4 = 0");
    assert_eqv("5x - 7y + 11z + 4 = 0", "10x - 14y + 22z + 8 = 0");
    assert_neq("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z - 4 = 0");
}

#[test]
fn infinity() {
    assert_eqv("\\infty", "\\infty");
    assert_eqv("infinity", "\\infty");
    assert_neq("\\infty", "-\\infty");
}

#[test]
fn base_subscripts() {
    assert_eqv("52_8", "52_{8}");
    assert_eqv("4210_{5}", "4210_5");
    assert_eqv("52_8", "52");
    assert_neq("52_8", "42");
    assert_neq("52_8", "52_9");
}

#[test]
fn degrees_and_units() {
    assert_eqv("90^\\circ", "90");
    assert_eqv("145^{\\circ}", "145");
    assert_eqv("5.4 \\text{ cents}", "5.4");
    assert_eqv("864 \\mbox{ inches}^2", "864");
    assert_eqv("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}");
    assert_eqv("18 dollars", "18");
    assert_neq("90^\\circ", "45");
}

#[test]
fn text_and_choices() {
    assert_eqv("\\text{(A)}", "A");
    assert_eqv("(C)", "\\text{C}");
    assert_neq("\\text{(A)}", "B");
    assert_eqv("\\text{Evelyn}", "Evelyn");
    assert_eqv("\\text{Evelyn}", "evelyn");
    assert_neq("\\text{Evelyn}", "Navin");
    assert_eqv("\\text{even}", "even");
    assert_neq("\\text{even}", "odd");
    assert_eqv("five", "5");
}

#[test]
fn empty_and_garbage() {
    assert_neq("", "5");
    assert_neq("}{", "5");
    assert_neq("\\frac{1}{0}", "0");
    assert_neq("\\sqrt{-1}", "1");
}

#[test]
fn answer_is_reusable() {
    let opts = GradeOptions::default();
    let a = Answer::parse("\\frac{1}{2}");
    let b = Answer::parse("0.5");
    let c = Answer::parse("\\dfrac12");
    assert_eq!(a.raw, "\\frac{1}{2}");
    assert_eq!(c.normalized, "\\frac{1}{2}");
    assert!(a.equivalent(&b, &opts) && b.equivalent(&c, &opts) && a.equivalent(&c, &opts));
    assert_eq!(b.as_f64(), Some(0.5));
    let cloned = a.clone();
    assert!(cloned.equivalent(&a, &opts));
}

#[test]
fn end_to_end_grading() {
    let opts = GradeOptions::default();
    let completion = "Natalia sold 48/2 = 24 clips in May. Altogether 48 + 24 = 72.\n\\boxed{72}";
    let pred = extract_answer(completion).unwrap();
    let gt = gsm8k_reference("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72").unwrap();
    assert!(is_equivalent(&pred, &gt, &opts));
    let wrong = extract_answer("So she sold 48 + 12 = 60 clips.").unwrap();
    assert!(!is_equivalent(&wrong, &gt, &opts));
}
