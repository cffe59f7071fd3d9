//! Issue 17: the answer classes the grader got wrong, each with positive and negative cases.
//! Expected values are worked out by hand (shown in the comments where not obvious).

use east::grade::{extract_answer, is_equivalent, strip_string, Answer, GradeOptions};

fn opts() -> GradeOptions {
    GradeOptions::default()
}

fn eq(a: &str, b: &str) -> bool {
    let o = opts();
    let r = is_equivalent(a, b, &o);
    assert_eq!(r, is_equivalent(b, a, &o), "asymmetric: {a:?} vs {b:?}");
    r
}

fn assert_eqv(a: &str, b: &str) {
    assert!(eq(a, b), "expected {a:?} ≡ {b:?}");
}

fn assert_neq(a: &str, b: &str) {
    assert!(!eq(a, b), "expected {a:?} ≢ {b:?}");
}

fn ex(c: &str) -> Option<String> {
    extract_answer(c)
}

/// Extract from a completion, then grade against a reference.
fn grades(completion: &str, reference: &str) -> bool {
    let pred = extract_answer(completion).unwrap_or_default();
    is_equivalent(&pred, reference, &opts())
}

// ------------------------------------------------------------------------------ extraction

#[test]
fn extract_math_span_after_closing_phrase() {
    assert_eq!(
        ex("Putting it together, we obtain $\\frac{2}{10}$.").as_deref(),
        Some("\\frac{2}{10}")
    );
    assert!(grades(
        "Putting it together, we obtain $\\frac{2}{10}$.",
        "\\frac15"
    ));
    assert!(!grades(
        "Putting it together, we obtain $\\frac{2}{10}$.",
        "10"
    ));
    assert_eq!(
        ex("So\n\n**Final Answer:** $-\\frac{5}{7}$").as_deref(),
        Some("$-\\frac{5}{7}$")
    );
    assert!(grades("**Final Answer:** $-\\frac{5}{7}$", "-\\frac{5}{7}"));
    assert!(!grades("**Final Answer:** $-\\frac{5}{7}$", "7"));
    assert!(grades("**Answer:** 12,\\!500", "12500"));
    assert!(!grades("**Answer:** 12,\\!500", "500"));
    assert_eq!(ex("In base 5 this is $31_{5}$.").as_deref(), Some("31_{5}"));
    assert!(grades("In base 5 this is $31_{5}$.", "31_5"));
    assert!(!grades("In base 5 this is $31_{5}$.", "5"));
    // \( \) and \[ \] spans
    assert_eq!(ex("Hence \\(x^2+1\\).").as_deref(), Some("x^2+1"));
    assert_eq!(
        ex("Thus\n\\[\n\\sqrt{3}\n\\]").as_deref(),
        Some("\\sqrt{3}")
    );
    // a chain of equalities: its last side
    assert_eq!(
        ex("The total is $3 \\times 4 = 12$.").as_deref(),
        Some("12")
    );
    // the bold header on its own line
    assert_eq!(
        ex("**Final Answer**\n$\\frac{1}{4}$").as_deref(),
        Some("$\\frac{1}{4}$")
    );
}

#[test]
fn extract_math_span_only_when_nothing_numeric_follows() {
    // a number after the span is the answer (the span was intermediate)
    assert_eq!(
        ex("Let $x$ be the apples. Then she has 12 left.").as_deref(),
        Some("12")
    );
    // currency dollars are not math delimiters
    assert_eq!(ex("He paid \\$5 and then \\$7 more.").as_deref(), Some("7"));
    assert_eq!(ex("He had $10, now $20.").as_deref(), Some("20"));
}

#[test]
fn extract_answer_in_closing_sentence() {
    assert_eq!(
        ex("Final Answer: The largest $n$ is 34.").as_deref(),
        Some("34")
    );
    assert!(grades("Final Answer: The largest $n$ is 34.", "34"));
    assert!(!grades("Final Answer: The largest $n$ is 34.", "35"));
    assert_eq!(
        ex("Answer: The probability is $\\frac{3}{8}$.").as_deref(),
        Some("\\frac{3}{8}")
    );
    assert_eq!(
        ex("The final answer is: The largest $n$ is 34.").as_deref(),
        Some("34")
    );
    assert_eq!(ex("So the answer is therefore 42.").as_deref(), Some("42"));
    // not a sentence: kept as written
    assert_eq!(
        ex("The final answer is 3.5 hours.").as_deref(),
        Some("3.5 hours")
    );
    assert_eq!(ex("Final Answer: Evelyn").as_deref(), Some("Evelyn"));
    assert_eq!(ex("Answer: y = 3x - 1").as_deref(), Some("y = 3x - 1"));
}

#[test]
fn extract_several_boxes_as_one_answer() {
    let c = "The solutions are \\boxed{(2, 2)} and \\boxed{(6, 2)}.";
    assert!(grades(c, "(2, 2), (6, 2)"));
    assert!(grades(c, "(6,2),(2,2)"));
    assert!(grades(c, "\\{(2,2),(6,2)\\}"));
    assert!(!grades(c, "(6, 2)"));
    assert!(!grades(c, "(2, 2), (6, 3)"));
    let c = "So $n$ is \\boxed{1}, \\boxed{2}, \\boxed{3}.";
    assert!(grades(c, "1, 2, 3"));
    assert!(grades(c, "3,2,1"));
    assert!(!grades(c, "3"));
    assert!(!grades(c, "1, 2"));
    let c = "$x = \\boxed{2}$ or $x = \\boxed{-3}$";
    assert!(grades(c, "2, -3"));
    // a box, some reasoning, then a corrected box: the last box alone
    let c = "First \\boxed{12}. Wait, recheck: the total is \\boxed{14}.";
    assert_eq!(ex(c).as_deref(), Some("14"));
    // the same box twice is one answer
    assert_eq!(ex("\\boxed{5} \\quad \\boxed{5}").as_deref(), Some("5"));
    // a multi-part raw answer survives normalisation part by part
    assert_eq!(
        strip_string("\\boxed{5\\text{ cm}}, \\boxed{1,234}"),
        "5,1234"
    );
}

#[test]
fn unit_stripping_leaves_no_debris() {
    assert_eq!(strip_string("150 \\mbox{ cm}^2"), "150");
    assert_eq!(strip_string("150~\\text{cm}^2"), "150");
    assert_eq!(strip_string("125\\textnormal{ miles}"), "125");
    assert_eq!(strip_string("\\boxed{125\\textnormal{ miles}}"), "125");
    assert_eq!(strip_string("7\\textrm{ m}"), "7");
    assert_eqv("150 \\mbox{ cm}^2", "150");
    assert_eqv("125\\textnormal{ miles}", "125");
    assert_neq("150 \\mbox{ cm}^2", "1502");
    assert!(grades("The area is \\boxed{150 \\mbox{ cm}^2}.", "150"));
    // the unit before a closing `$`: still trailing
    assert_eq!(strip_string("$150 \\mbox{ cm}^2$"), "150");
    assert!(grades("The answer is $150 \\mbox{ cm}^2$.", "150"));
    assert!(grades("The answer is $150 \\text{ cm}^2$.", "150"));
    assert!(!grades("The answer is $150 \\text{ cm}^2$.", "22500"));
}

// ------------------------------------------------------------------------- equivalences

#[test]
fn equations_rearranged_or_scaled() {
    assert_eqv("x = 4", "4 = x");
    assert_neq("x = 4", "4 = y");
    assert_eqv("4 = x", "4");
    assert_eqv("y = 3x - 1", "y - 3x = -1");
    assert_eqv("y = 3x - 1", "3x - 1 = y");
    assert_eqv("y = 5x", "10x - 2y = 0");
    assert_eqv("y=3x-1", "3x-1");
    assert_neq("y = 3x - 1", "y - 3x = 1");
    assert_neq("y = 5x", "10x - y = 0");
    assert_neq("y = 3x - 1", "x = 3y - 1");
}

#[test]
fn repeating_decimals() {
    assert_eqv("0.\\overline{6}", "\\frac{2}{3}");
    // 2.1333… = 32/15
    assert_eqv("2.1\\overline{3}", "\\frac{32}{15}");
    // -1.4545… = -16/11
    assert_eqv("-1.\\overline{45}", "-\\frac{16}{11}");
    assert_eqv("0.\\overline{09}", "\\frac{1}{11}");
    assert_eqv("0.\\bar{3}", "\\frac13");
    assert_neq("0.\\overline{6}", "0.6");
    assert_neq("0.\\overline{6}", "\\frac{3}{5}");
    assert_neq("2.1\\overline{3}", "\\frac{21}{10}");
    assert_neq("-1.\\overline{45}", "-\\frac{145}{100}");
}

#[test]
fn unicode_math() {
    assert_eqv("√30", "\\sqrt{30}");
    assert_neq("√30", "\\sqrt{3}");
    assert_eqv("2√3", "2\\sqrt3");
    assert_eqv("3 × 4", "12");
    assert_eqv("3·4", "12");
    assert_eqv("−5", "-5");
    assert_neq("−5", "5");
    assert_eqv("2π", "2\\pi");
    assert_neq("2π", "\\pi");
    assert_eqv("(−∞, 3]", "(-\\infty,3]");
    assert_eqv("x ≤ 3", "(-\\infty, 3]");
    assert_eqv("x ≥ 3", "[3, \\infty)");
    assert_neq("x ≥ 3", "(3, \\infty)");
}

#[test]
fn scientific_notation() {
    assert_eqv("3.5e-4", ".00035");
    assert_eqv("3.5E-4", "3.5\\times10^{-4}");
    assert_eqv("1e6", "1,000,000");
    assert_neq("3.5e-4", ".0035");
    assert_neq("3.5e-4", "3.5");
}

#[test]
fn scalar_times_matrix() {
    assert_eqv(
        "2\\begin{pmatrix} 1 \\\\ -3 \\end{pmatrix}",
        "\\begin{pmatrix} 2 \\\\ -6 \\end{pmatrix}",
    );
    assert_eqv(
        "\\frac{1}{3}\\begin{pmatrix} 3 & 6 \\\\ 1 & 0 \\end{pmatrix}",
        "\\begin{pmatrix} 1 & 2 \\\\ \\frac13 & 0 \\end{pmatrix}",
    );
    assert_eqv(
        "-\\begin{pmatrix} 1 & -2 \\\\ 0 & 4 \\end{pmatrix}",
        "\\begin{pmatrix} -1 & 2 \\\\ 0 & -4 \\end{pmatrix}",
    );
    assert_eqv("2\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "(2, 4)");
    assert_neq(
        "2\\begin{pmatrix} 1 \\\\ -3 \\end{pmatrix}",
        "\\begin{pmatrix} 1 \\\\ -3 \\end{pmatrix}",
    );
    assert_neq(
        "-\\begin{pmatrix} 1 & -2 \\\\ 0 & 4 \\end{pmatrix}",
        "\\begin{pmatrix} 1 & -2 \\\\ 0 & 4 \\end{pmatrix}",
    );
}

#[test]
fn set_differences() {
    assert_eqv(
        "\\mathbb{R} \\setminus [1,4]",
        "(-\\infty, 1) \\cup (4, \\infty)",
    );
    assert_eqv("(0,10) \\setminus \\{5\\}", "(0,5) \\cup (5,10)");
    assert_eqv("[0,10] \\setminus (0,10)", "\\{0, 10\\}");
    assert_neq(
        "\\mathbb{R} \\setminus [1,4]",
        "(-\\infty, 1] \\cup [4, \\infty)",
    );
    assert_neq("(0,10) \\setminus \\{5\\}", "(0,10)");
    assert_neq("(0,10) \\setminus \\{5\\}", "(0,5) \\cup (6,10)");
    // unions compare as sets of reals: touching pieces merge
    assert_eqv("(0,5] \\cup (5,10)", "(0,10)");
    assert_neq("(0,5) \\cup (5,10)", "(0,10)");
}

#[test]
fn named_tuples_and_assignments() {
    assert_eqv("a = 3, b = -4", "(3,-4)");
    assert_eqv("a = 3, b = -4", "b = -4, a = 3");
    assert_neq("a = 3, b = -4", "(-4,3)");
    assert_neq("a = 3, b = -4", "a = -4, b = 3");
    assert_eqv("(a,b,c) = (2,-7,5)", "(2,-7,5)");
    assert_neq("(a,b,c) = (2,-7,5)", "(2,-7,-5)");
    assert_eqv("x = 2, x = -3", "2, -3");
    assert_eqv("x = 2, x = -3", "-3, 2");
    assert_neq("x = 2, x = -3", "2, 3");
    assert_eqv("x=2, y=3", "(2,3)");
    assert_neq("x=2, y=3", "(3,2)");
    assert_neq("x=2, y=3", "y=2, x=3");
}

#[test]
fn complex_arithmetic() {
    // 10/(3+i) = 10(3-i)/10 = 3-i
    assert_eqv("\\frac{10}{3+i}", "3 - i");
    assert_neq("\\frac{10}{3+i}", "3 + i");
    // (1+i)^2 = 2i
    assert_eqv("(1+i)^2", "2i");
    assert_eqv("i^2", "-1");
    assert_eqv("\\frac{1+i}{1-i}", "i");
    assert_neq("\\frac{1+i}{1-i}", "-i");
    assert_eqv("6 - 5i", "-5i+6");
}

#[test]
fn inequalities_as_intervals() {
    assert_eqv("-2 \\le x \\le 7", "x \\in [-2, 7]");
    assert_eqv("-2 \\leq x \\leq 7", "[-2,7]");
    assert_neq("-2 \\le x \\le 7", "[-2, 7)");
    assert_neq("-2 \\le x \\le 7", "(-2, 7)");
    assert_eqv("0 < y < 1", "(0, 1)");
    assert_neq("0 < y < 1", "[0, 1]");
    assert_eqv("x > 3", "(3, \\infty)");
    assert_eqv("3 < x", "(3, \\infty)");
    assert_eqv("x \\le 5", "(-\\infty, 5]");
    assert_neq("x < 5", "(-\\infty, 5]");
    assert_eqv("x < -2 \\text{ or } x > 3", "(-\\infty,-2)\\cup(3,\\infty)");
    assert_neq("x < -2 \\text{ or } x > 3", "(-\\infty,-2]\\cup(3,\\infty)");
}

// ------------------------------------------------------ unequal answers graded equal before

#[test]
fn rounded_decimals_are_not_exact_values() {
    assert_neq("0.6667", "\\frac{2}{3}");
    assert_neq("12.57", "4\\pi");
    assert_neq("0.866", "\\frac{\\sqrt{3}}{2}");
    assert_neq("3.14", "\\pi");
    assert_neq("3.14159", "\\pi");
    // a decimal equal to the exact value is equal
    assert_eqv("0.75", "\\frac34");
    assert_eqv("2.5\\pi", "\\frac{5\\pi}{2}");
    // the reference is itself a decimal of that precision
    assert_eqv("0.67", "0.670");
    assert_neq("0.67", "0.6667");
}

#[test]
fn approximate_option_accepts_rounded_decimals() {
    let approx = GradeOptions {
        approximate: Some(1e-4),
        ..GradeOptions::default()
    };
    let e = |a: &str, b: &str| {
        let r = is_equivalent(a, b, &approx);
        assert_eq!(r, is_equivalent(b, a, &approx));
        r
    };
    assert!(e("0.6667", "\\frac{2}{3}")); // |0.6667 - 2/3| / (2/3) = 5e-5
    assert!(e("3.14159", "\\pi"));
    assert!(e("\\frac{3}{56}", "0.05357"));
    assert!(!e("0.67", "\\frac{2}{3}")); // 5e-3 relative
    assert!(!e("12.5", "4\\pi"));
    // integers and fractions without decimals stay exact
    assert!(!e("123456", "123457"));
    assert!(!e("\\frac{10001}{10000}", "1"));
    assert_eq!(GradeOptions::default().approximate, None);
}

#[test]
fn fractions_compare_exactly() {
    // 333/1000 vs 1/3 and 10001/30000 vs 1/3 agree to 3 and 4 digits
    assert_neq("\\frac{333}{1000}", "\\frac{1}{3}");
    assert_neq("\\frac{10001}{30000}", "\\frac{1}{3}");
    assert_neq("\\frac{22}{7}", "\\frac{355}{113}");
    assert_eqv("\\frac{10001}{30003}", "\\frac{1}{3}");
}

#[test]
fn percent_of_a_fraction_is_not_the_fraction() {
    assert_neq("\\frac{3}{4}\\%", "\\frac{3}{4}");
    assert_eqv("\\frac{3}{4}\\%", "0.0075");
    assert_eqv("\\frac{3}{4}\\%", "\\frac{3}{4}%");
    let on = GradeOptions {
        percent_rule: true,
        ..GradeOptions::default()
    };
    assert!(is_equivalent("\\frac{3}{4}\\%", "\\frac{3}{4}", &on));
    assert!(is_equivalent("\\frac{3}{4}", "\\frac{3}{4}\\%", &on));
    // a whole-number percentage still matches the bare number (GSM8K references drop `%`)
    assert_eqv("50\\%", "50");
    assert_eqv("12.5\\%", "12.5");
    assert_eqv("33\\frac{1}{3}\\%", "33\\frac13");
}

#[test]
fn tolerance_relative_to_what_numbers_show() {
    // 3^(1/1000) = 1.0011
    assert_neq("\\sqrt[1000]{3}", "1");
    assert_neq("10^{-12}", "0");
    assert_neq("1+10^{-12}", "1");
    assert_neq("\\frac{1}{10^{15}}", "0");
    // floating-point noise of irrational arithmetic is not a difference
    assert_eqv("\\sin(\\pi)", "0");
    assert_eqv("\\sqrt{2}\\cdot\\sqrt{2}", "2");
    assert_eqv("\\frac{\\sqrt{6}}{2}", "\\sqrt{\\frac{3}{2}}");
}

#[test]
fn answers_parse_once_and_stay_reusable() {
    let a = Answer::parse("y = 3x - 1");
    let b = Answer::parse("y - 3x = -1");
    assert!(a.equivalent(&b, &opts()) && b.equivalent(&a, &opts()));
    assert_eq!(Answer::parse("x = 5").as_f64(), Some(5.0));
    assert_eq!(Answer::parse("0.\\overline{3}").as_f64(), Some(1.0 / 3.0));
}
