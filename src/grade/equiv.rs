//! Parsed answers and mathematical equivalence.

use super::latex::{self, Expr, Num};
use super::normalize::strip_string;

/// Normalised answers longer than this are only compared as strings.
pub(crate) const MAX_PARSE_LEN: usize = 1000;
/// Nesting of structures (tuples of sets of intervals ...) beyond this is treated as text.
const MAX_FORM_DEPTH: u32 = 16;
/// Collections larger than this are compared in order only (no quadratic matching).
const MAX_UNORDERED: usize = 64;
/// Relative tolerance when comparing expressions with variables at sample points.
const SYMBOLIC_TOL: f64 = 1e-9;
/// Fixed seed of the sample points for variables.
const POINT_SEED: u64 = 0x5EED_EA57_0000_0001;

/// Options for [`Answer::equivalent`] / [`is_equivalent`].
#[derive(Clone, Debug)]
pub struct GradeOptions {
    /// Relative tolerance for numbers (`|a-b| <= rel_tol * max(|a|,|b|)`); the toolkit's 1e-4.
    /// Two exact integers are always compared exactly.
    pub rel_tol: f64,
    /// The toolkit's percentage rule: a number also matches the other side times 100 or divided
    /// by 100 (`0.5` ~ `50`). Off by default (the Qwen2.5-Math evaluation turns it on).
    /// It is symmetric: `a = 100 b` iff `b = a / 100`.
    pub percent_rule: bool,
    /// Number of pseudo-random points at which expressions with variables are compared.
    pub symbolic_points: usize,
}

impl Default for GradeOptions {
    fn default() -> Self {
        GradeOptions {
            rel_tol: 1e-4,
            percent_rule: false,
            symbolic_points: 8,
        }
    }
}

/// An answer parsed once, compared many times.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The answer as given.
    pub raw: String,
    /// [`strip_string`] of `raw`.
    pub normalized: String,
    form: Form,
}

/// The parsed shape of a normalised answer.
#[derive(Clone, Debug)]
enum Form {
    /// Not parsed: compared as a string only.
    Text,
    /// A constant (exact rational or float).
    Num(Num),
    /// `\infty` (true) or `-\infty` (false).
    Inf(bool),
    /// `52_8`: digits (upper case, no leading zeros) in a base.
    Base { digits: String, base: u32 },
    /// An expression with at least one variable.
    Expr { expr: Box<Expr> },
    /// `lhs = rhs` with variables.
    Eq { lhs: Box<Expr>, rhs: Box<Expr> },
    /// Ordered, bracketed: tuples, points, intervals. Brackets must match to be equal.
    Seq {
        open: char,
        close: char,
        items: Vec<Elem>,
    },
    /// `{a, b}` and `a \pm b`: unordered.
    Set(Vec<Elem>),
    /// Bare `a, b, c` (e.g. "all solutions"): unordered.
    List(Vec<Elem>),
    Matrix {
        rows: usize,
        cols: usize,
        cells: Vec<Elem>,
    },
    /// `A \cup B`: unordered.
    Union(Vec<Elem>),
}

#[derive(Clone, Debug)]
struct Elem {
    norm: String,
    form: Form,
}

impl Elem {
    fn parse(s: &str, depth: u32) -> Elem {
        Elem {
            norm: s.to_string(),
            form: parse_form(s, depth),
        }
    }
}

impl Answer {
    /// Normalise and parse. Never panics; long or unparseable answers become plain strings.
    pub fn parse(raw: &str) -> Answer {
        let normalized = strip_string(raw);
        let form = if normalized.len() > MAX_PARSE_LEN {
            Form::Text
        } else {
            parse_form(&normalized, 0)
        };
        Answer {
            raw: raw.to_string(),
            normalized,
            form,
        }
    }

    /// Mathematical equivalence (see the module docs of `grade` for the rules). Symmetric.
    pub fn equivalent(&self, other: &Answer, opts: &GradeOptions) -> bool {
        elem_eq(
            &self.normalized,
            &self.form,
            &other.normalized,
            &other.form,
            opts,
            0,
        )
    }

    /// The numeric value, if the answer is a constant (`\frac{1}{2}` → 0.5).
    pub fn as_f64(&self) -> Option<f64> {
        match self.form {
            Form::Num(n) => Some(n.to_f64()),
            _ => None,
        }
    }
}

/// Parse both and compare: `Answer::parse(pred).equivalent(&Answer::parse(reference), opts)`.
pub fn is_equivalent(pred: &str, reference: &str, opts: &GradeOptions) -> bool {
    Answer::parse(pred).equivalent(&Answer::parse(reference), opts)
}

// ---------------------------------------------------------------------------------------------
// Parsing the normalised string into a form

fn opens(c: u8) -> bool {
    matches!(c, b'(' | b'[' | b'{')
}

fn closes(c: u8) -> bool {
    matches!(c, b')' | b']' | b'}')
}

/// Split at `sep` outside any brackets. Returns `None` if brackets are unbalanced.
fn split_top<'a>(s: &'a str, sep: &str) -> Option<Vec<&'a str>> {
    let b = s.as_bytes();
    let sb = sep.as_bytes();
    let mut parts = Vec::new();
    let mut depth: i64 = 0;
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if opens(c) {
            depth += 1;
        } else if closes(c) {
            depth -= 1;
            if depth < 0 {
                return None;
            }
        } else if depth == 0 && b[i..].starts_with(sb) {
            // `\pm` must not be the start of a longer command name
            let end = i + sb.len();
            let glued = sb[sb.len() - 1].is_ascii_alphabetic()
                && b.get(end).is_some_and(u8::is_ascii_alphabetic);
            if !glued {
                parts.push(&s[last..i]);
                i = end;
                last = i;
                continue;
            }
        }
        i += 1;
    }
    if depth != 0 {
        return None;
    }
    parts.push(&s[last..]);
    Some(parts)
}

/// True if the bracket opened at byte 0 closes at the last byte.
fn encloses(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 2 || !opens(b[0]) || !closes(b[b.len() - 1]) {
        return false;
    }
    let mut depth: i64 = 0;
    for &c in &b[1..b.len() - 1] {
        if opens(c) {
            depth += 1;
        } else if closes(c) {
            depth -= 1;
            if depth < 0 {
                return false;
            }
        }
    }
    depth == 0
}

/// `1,234` / `-12,345.5`: a number with thousands separators (at top level only).
fn thousands_number(s: &str) -> Option<Num> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    let mut groups = int.split(',');
    let first = groups.next()?;
    if first.is_empty() || first.len() > 3 || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n = 0;
    for g in groups {
        if g.len() != 3 || !g.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let digits: String = int.chars().filter(|&c| c != ',').collect();
    let text = match frac {
        Some(f) => format!("{digits}.{f}"),
        None => digits,
    };
    let v = latex::parse_decimal(&text)?;
    if s.starts_with('-') {
        v.neg()
    } else {
        Some(v)
    }
}

/// `52_8`, `4210_{5}`.
fn base_number(s: &str) -> Option<Form> {
    let (digits, base) = s.split_once('_')?;
    let base = base
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(base);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_alphanumeric())
        || !digits.as_bytes()[0].is_ascii_digit()
    {
        return None;
    }
    if base.is_empty() || base.len() > 2 || !base.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base: u32 = base.parse().ok()?;
    if !(2..=36).contains(&base) {
        return None;
    }
    let up = digits.to_ascii_uppercase();
    let trimmed = up.trim_start_matches('0');
    let digits = if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    };
    Some(Form::Base { digits, base })
}

/// Expand one top-level `\pm` / `\mp` in each item into two items.
fn expand_pm(items: &[&str], depth: u32) -> Vec<Elem> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match pm_split(item) {
            Some((plus, minus)) => {
                out.push(Elem::parse(&plus, depth));
                out.push(Elem::parse(&minus, depth));
            }
            None => out.push(Elem::parse(item, depth)),
        }
    }
    out
}

/// `a\pm b` → (`a+b`, `a-b`) when there is exactly one top-level `\pm` or `\mp`.
fn pm_split(s: &str) -> Option<(String, String)> {
    for (cmd, first, second) in [("\\pm", '+', '-'), ("\\mp", '-', '+')] {
        if let Some(parts) = split_top(s, cmd) {
            if parts.len() == 2 {
                let (a, b) = (parts[0], parts[1]);
                if b.is_empty() {
                    return None;
                }
                return Some((format!("{a}{first}{b}"), format!("{a}{second}{b}")));
            }
            if parts.len() > 2 {
                return None;
            }
        }
    }
    None
}

fn parse_form(s: &str, depth: u32) -> Form {
    if depth > MAX_FORM_DEPTH || s.is_empty() || s.len() > MAX_PARSE_LEN {
        return Form::Text;
    }
    match s {
        "\\infty" | "+\\infty" => return Form::Inf(true),
        "-\\infty" => return Form::Inf(false),
        _ => {}
    }
    // LaTeX-protected thousands separators `1{,}000`
    if s.contains("{,}") {
        return parse_form(&s.replace("{,}", ","), depth + 1);
    }
    let Some(top_commas) = split_top(s, ",") else {
        return Form::Text;
    };
    if let Some(parts) = split_top(s, "\\cup") {
        if parts.len() > 1 {
            return Form::Union(parts.iter().map(|p| Elem::parse(p, depth + 1)).collect());
        }
    }
    if let Some(inner) = s
        .strip_prefix("\\begin{pmatrix}")
        .and_then(|r| r.strip_suffix("\\end{pmatrix}"))
    {
        return parse_matrix(inner, depth);
    }
    if top_commas.len() > 1 {
        if let Some(v) = thousands_number(s) {
            return Form::Num(v);
        }
        return Form::List(expand_pm(&top_commas, depth + 1));
    }
    if encloses(s) {
        let b = s.as_bytes();
        let (open, close) = (b[0] as char, b[b.len() - 1] as char);
        let inner = &s[1..s.len() - 1];
        let Some(items) = split_top(inner, ",") else {
            return Form::Text;
        };
        if open == '{' {
            if close != '}' {
                return Form::Text;
            }
            if inner.is_empty() {
                return Form::Set(Vec::new());
            }
            if items.len() > 1 {
                return Form::Set(expand_pm(&items, depth + 1));
            }
            return parse_form(inner, depth + 1);
        }
        if close == '}' {
            return Form::Text;
        }
        if items.len() > 1 {
            return Form::Seq {
                open,
                close,
                items: items.iter().map(|p| Elem::parse(p, depth + 1)).collect(),
            };
        }
        // `(5)`, `[x+1]`: grouping
        if (open == '(' && close == ')') || (open == '[' && close == ']') {
            return parse_form(inner, depth + 1);
        }
        return Form::Text;
    }
    if let Some((plus, minus)) = pm_split(s) {
        return Form::Set(vec![
            Elem::parse(&plus, depth + 1),
            Elem::parse(&minus, depth + 1),
        ]);
    }
    if let Some(sides) = split_top(s, "=") {
        if sides.len() == 2 {
            if let (Some(l), Some(r)) = (latex::parse_expr(sides[0]), latex::parse_expr(sides[1])) {
                if !l.vars().is_empty() || !r.vars().is_empty() {
                    return Form::Eq {
                        lhs: Box::new(l),
                        rhs: Box::new(r),
                    };
                }
            }
            return Form::Text;
        }
        if sides.len() > 2 {
            return Form::Text;
        }
    }
    if let Some(f) = base_number(s) {
        return f;
    }
    match latex::parse_expr(s) {
        Some(e) => {
            if e.vars().is_empty() {
                match e.eval(&|_| None) {
                    Some(v) => Form::Num(v),
                    None => Form::Text,
                }
            } else {
                Form::Expr { expr: Box::new(e) }
            }
        }
        None => Form::Text,
    }
}

fn parse_matrix(inner: &str, depth: u32) -> Form {
    let Some(rows) = split_top(inner, "\\\\") else {
        return Form::Text;
    };
    let rows: Vec<&str> = rows.into_iter().filter(|r| !r.trim().is_empty()).collect();
    let mut cells = Vec::new();
    let mut cols = 0;
    for (i, row) in rows.iter().enumerate() {
        let Some(rc) = split_top(row, "&") else {
            return Form::Text;
        };
        if i == 0 {
            cols = rc.len();
        } else if rc.len() != cols {
            return Form::Text;
        }
        cells.extend(rc.iter().map(|c| Elem::parse(c.trim(), depth + 1)));
    }
    if rows.is_empty() || cols == 0 {
        return Form::Text;
    }
    Form::Matrix {
        rows: rows.len(),
        cols,
        cells,
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison

fn isclose(a: f64, b: f64, tol: f64) -> bool {
    a == b || (a - b).abs() <= tol * a.abs().max(b.abs())
}

fn num_close(x: Num, y: Num, tol: f64) -> bool {
    match (x, y) {
        (Num::R(a, 1), Num::R(b, 1)) => a == b,
        (Num::R(a, b), Num::R(c, d)) if a == c && b == d => true,
        _ => isclose(x.to_f64(), y.to_f64(), tol),
    }
}

fn num_eq(x: Num, y: Num, opts: &GradeOptions) -> bool {
    if num_close(x, y, opts.rel_tol) {
        return true;
    }
    if opts.percent_rule {
        let hundred = Num::int(100);
        for v in [y.mul(hundred), y.div(hundred)].into_iter().flatten() {
            if num_close(x, v, opts.rel_tol) {
                return true;
            }
        }
    }
    false
}

/// Value of variable `name` at sample point `k`: deterministic pseudo-random in [0.5, 3.5),
/// the same for both sides of a comparison (splitmix64 of a fixed seed, the name and `k`).
fn var_value(name: &str, k: usize) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ POINT_SEED ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    0.5 + 3.0 * u
}

/// A constant or an expression, evaluated at sample point `k`.
fn eval_at(f: &Form, k: usize) -> Option<f64> {
    match f {
        Form::Num(n) => Some(n.to_f64()),
        Form::Expr { expr } => expr.eval(&|v| Some(var_value(v, k))).map(Num::to_f64),
        _ => None,
    }
}

fn sym_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= SYMBOLIC_TOL * a.abs().max(b.abs()) + 1e-12
}

/// Compare at the sample points: every point where one side is defined must have the other
/// defined and equal, and at least half the points must be defined.
fn sampled_eq(a: &Form, b: &Form, opts: &GradeOptions) -> bool {
    let k = opts.symbolic_points.max(1);
    let mut valid = 0;
    for i in 0..k {
        match (eval_at(a, i), eval_at(b, i)) {
            (Some(x), Some(y)) => {
                if !sym_close(x, y) {
                    return false;
                }
                valid += 1;
            }
            (None, None) => {}
            _ => return false,
        }
    }
    valid > 0 && valid * 2 >= k
}

/// Equations are equal if `lhs - rhs` of one is a non-zero constant multiple of the other's.
fn equations_eq(a: (&Expr, &Expr), b: (&Expr, &Expr), opts: &GradeOptions) -> bool {
    let k = opts.symbolic_points.max(1);
    let diff = |(l, r): (&Expr, &Expr), i: usize| -> Option<f64> {
        let env = |v: &str| Some(var_value(v, i));
        Some(l.eval(&env)?.to_f64() - r.eval(&env)?.to_f64())
    };
    let mut ratio: Option<f64> = None;
    let mut valid = 0;
    for i in 0..k {
        match (diff(a, i), diff(b, i)) {
            (Some(x), Some(y)) => {
                let (zx, zy) = (x.abs() < 1e-12, y.abs() < 1e-12);
                if zx && zy {
                    valid += 1;
                    continue;
                }
                if zx || zy {
                    return false;
                }
                let r = x / y;
                match ratio {
                    None => ratio = Some(r),
                    Some(r0) => {
                        if !sym_close(r, r0) {
                            return false;
                        }
                    }
                }
                valid += 1;
            }
            (None, None) => {}
            _ => return false,
        }
    }
    ratio.is_some() && valid * 2 >= k
}

/// Plain words compare case-insensitively (`Evelyn` ~ `evelyn`).
fn words_eq(a: &str, b: &str) -> bool {
    let wordy = |s: &str| s.len() >= 2 && s.bytes().all(|c| c.is_ascii_alphabetic() || c == b',');
    wordy(a) && wordy(b) && a.eq_ignore_ascii_case(b)
}

/// Multiple-choice letter: `A`, `(A)` (after normalisation `\text{(A)}` is `(A)`).
fn choice_letter(s: &str) -> Option<u8> {
    let inner = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .unwrap_or(s);
    match inner.as_bytes() {
        [c @ b'A'..=b'E'] => Some(*c),
        _ => None,
    }
}

fn elem_eq(an: &str, af: &Form, bn: &str, bf: &Form, opts: &GradeOptions, depth: u32) -> bool {
    if an == bn || words_eq(an, bn) {
        return true;
    }
    if let (Some(x), Some(y)) = (choice_letter(an), choice_letter(bn)) {
        return x == y;
    }
    form_eq(af, bf, opts, depth)
}

fn ordered_eq(a: &[Elem], b: &[Elem], opts: &GradeOptions, depth: u32) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| elem_eq(&x.norm, &x.form, &y.norm, &y.form, opts, depth + 1))
}

/// Set equality: every element of each side has an equivalent on the other side.
fn unordered_eq(a: &[Elem], b: &[Elem], opts: &GradeOptions, depth: u32) -> bool {
    if a.len() > MAX_UNORDERED || b.len() > MAX_UNORDERED {
        return ordered_eq(a, b, opts, depth);
    }
    // Each pair is compared at most once (memoised), so nested sets stay O(|a|·|b|) per level.
    let mut memo: Vec<Option<bool>> = vec![None; a.len() * b.len()];
    let mut same = |i: usize, j: usize| -> bool {
        *memo[i * b.len() + j].get_or_insert_with(|| {
            elem_eq(
                &a[i].norm,
                &a[i].form,
                &b[j].norm,
                &b[j].form,
                opts,
                depth + 1,
            )
        })
    };
    (0..a.len()).all(|i| (0..b.len()).any(|j| same(i, j)))
        && (0..b.len()).all(|j| (0..a.len()).any(|i| same(i, j)))
}

fn form_eq(a: &Form, b: &Form, opts: &GradeOptions, depth: u32) -> bool {
    if depth > MAX_FORM_DEPTH {
        return false;
    }
    use Form::*;
    match (a, b) {
        (Num(x), Num(y)) => num_eq(*x, *y, opts),
        (Num(_) | Expr { .. }, Num(_) | Expr { .. }) => sampled_eq(a, b, opts),
        (Inf(x), Inf(y)) => x == y,
        (
            Base {
                digits: d1,
                base: b1,
            },
            Base {
                digits: d2,
                base: b2,
            },
        ) => d1 == d2 && b1 == b2,
        // `52_8` vs `52`: the subscript was left off
        (Base { digits, .. }, Num(n)) | (Num(n), Base { digits, .. }) => n
            .as_integer()
            .is_some_and(|i| i >= 0 && i.to_string() == *digits),
        (Eq { lhs: l1, rhs: r1 }, Eq { lhs: l2, rhs: r2 }) => {
            equations_eq((l1, r1), (l2, r2), opts)
        }
        (
            Seq {
                open: o1,
                close: c1,
                items: i1,
            },
            Seq {
                open: o2,
                close: c2,
                items: i2,
            },
        ) => o1 == o2 && c1 == c2 && ordered_eq(i1, i2, opts, depth),
        (Set(x) | List(x), Set(y) | List(y)) | (Union(x), Union(y)) => {
            unordered_eq(x, y, opts, depth)
        }
        // a bare list against a tuple: in order (the toolkit strips the brackets)
        (List(x), Seq { items: y, .. }) | (Seq { items: y, .. }, List(x)) => {
            ordered_eq(x, y, opts, depth)
        }
        (
            Matrix {
                rows: r1,
                cols: c1,
                cells: x,
            },
            Matrix {
                rows: r2,
                cols: c2,
                cells: y,
            },
        ) => r1 == r2 && c1 == c2 && ordered_eq(x, y, opts, depth),
        // a column or row vector against a parenthesised tuple
        (
            Matrix { rows, cols, cells },
            Seq {
                open: '(',
                close: ')',
                items,
            },
        )
        | (
            Seq {
                open: '(',
                close: ')',
                items,
            },
            Matrix { rows, cols, cells },
        ) => (*rows == 1 || *cols == 1) && ordered_eq(cells, items, opts, depth),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Form {
        Answer::parse(s).form
    }

    #[test]
    fn forms() {
        assert!(matches!(form("42"), Form::Num(Num::R(42, 1))));
        assert!(matches!(form("1,234"), Form::Num(Num::R(1234, 1))));
        assert!(matches!(form("\\frac{1}{2}"), Form::Num(Num::R(1, 2))));
        assert!(matches!(form("x^2+1"), Form::Expr { .. }));
        assert!(matches!(
            form("(1,2)"),
            Form::Seq {
                open: '(',
                close: ')',
                ..
            }
        ));
        assert!(matches!(
            form("[0,1)"),
            Form::Seq {
                open: '[',
                close: ')',
                ..
            }
        ));
        assert!(matches!(form("\\{1,2\\}"), Form::Set(_)));
        assert!(matches!(form("1,-2"), Form::List(_)));
        assert!(matches!(form("1\\pm\\sqrt{2}"), Form::Set(_)));
        assert!(matches!(form("(0,9)\\cup(9,36)"), Form::Union(_)));
        assert!(matches!(
            form("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
            Form::Matrix {
                rows: 2,
                cols: 2,
                ..
            }
        ));
        assert!(matches!(form("52_8"), Form::Base { base: 8, .. }));
        assert!(matches!(form("5x-7y+11z+4=0"), Form::Eq { .. }));
        assert!(matches!(form("\\infty"), Form::Inf(true)));
        assert!(matches!(form("\\text{Evelyn}"), Form::Text));
        assert!(matches!(form("(a+5)(b+2)"), Form::Expr { .. }));
        assert!(matches!(form("((1,2)"), Form::Text));
    }

    #[test]
    fn sample_points_are_deterministic_and_spread() {
        assert_eq!(var_value("x", 0), var_value("x", 0));
        assert_ne!(var_value("x", 0), var_value("y", 0));
        assert_ne!(var_value("x", 0), var_value("x", 1));
        for k in 0..100 {
            let v = var_value("t", k);
            assert!((0.5..3.5).contains(&v));
        }
    }
}
