//! Parsed answers and mathematical equivalence.

use super::latex::{self, Expr, Num};
use super::normalize::{strip_keep_equation, strip_string};

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
    /// Relative tolerance for values that are not exact rationals, i.e. floating-point results
    /// of irrational arithmetic (`\sqrt{2}`, `\pi`, trigonometry): `|a-b| <= rel_tol *
    /// max(|a|,|b|)`, default 1e-9 (what an `f64` evaluation can show). Two exact rationals
    /// (integers, fractions, decimals as written) are always compared exactly.
    pub rel_tol: f64,
    /// Accept a rounded decimal: `None` (default) compares a decimal such as `0.6667` exactly,
    /// so it does not match `\frac{2}{3}`, and `12.57` does not match `4\pi`. `Some(tol)`
    /// accepts a number written with a decimal point (on either side) within relative
    /// tolerance `tol` of the other side (the Qwen2.5-Math toolkit's rule with `tol = 1e-4`);
    /// integers and fractions without decimals are still compared exactly (unless
    /// `approximate_all`).
    pub approximate: Option<f64>,
    /// Whether `approximate` covers every number, integers and exact fractions too, as the
    /// toolkit's `numeric_equal` does (`123457` ~ `123456`, `10001` ~ `10000` at 1e-4). Off by
    /// default: an integer answer is exact.
    pub approximate_all: bool,
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
            rel_tol: 1e-9,
            approximate: None,
            approximate_all: false,
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
    /// A constant (exact rational or float); `true` if written with a decimal fraction
    /// (`0.6667`, a possibly rounded value, see [`GradeOptions::approximate`]).
    Num(Num, bool),
    /// A complex constant `re + im·i` with `im ≠ 0`.
    Complex(Num, Num),
    /// A set of reals given as (in)equalities `-2 \le x < 7`: canonical intervals.
    Ivs(Vec<Iv>),
    /// `A \setminus B`.
    Minus(Box<Elem>, Box<Elem>),
    /// `\infty` (true) or `-\infty` (false).
    Inf(bool),
    /// `52_8`: digits (upper case, no leading zeros) in a base.
    Base { digits: String, base: u32 },
    /// An expression with at least one variable.
    Expr { expr: Box<Expr> },
    /// `lhs = rhs` with variables. `sides` when both parse as expressions; `value` when one
    /// side is a lone variable not occurring on the other (`y = 2x + 3`, `4 = x`): the variable
    /// and the other side, which such an equation also matches.
    Eq {
        sides: Option<(Box<Expr>, Box<Expr>)>,
        value: Option<(String, Box<Elem>)>,
    },
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
            // an equation or named assignment keeps its left side for parsing (the normalised
            // string, the toolkit's, drops `y =` / `x=` prefixes)
            let kept = if raw.contains('=') {
                let keep = strip_keep_equation(raw);
                if keep != normalized && keep.len() <= MAX_PARSE_LEN {
                    Some(parse_form(&keep, 0)).filter(|f| !matches!(f, Form::Text))
                } else {
                    None
                }
            } else {
                None
            };
            kept.unwrap_or_else(|| parse_form(&normalized, 0))
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
        match &self.form {
            Form::Num(n, _) => Some(n.to_f64()),
            Form::Eq {
                value: Some((_, v)),
                ..
            } => match v.form {
                Form::Num(n, _) => Some(n.to_f64()),
                _ => None,
            },
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
    for minus in ["\\setminus", "\\backslash"] {
        if let Some(parts) = split_top(s, minus) {
            if parts.len() == 2 {
                return Form::Minus(
                    Box::new(Elem::parse(parts[0], depth + 1)),
                    Box::new(Elem::parse(parts[1], depth + 1)),
                );
            }
        }
    }
    if let Some(inner) = s
        .strip_prefix("\\begin{pmatrix}")
        .and_then(|r| r.strip_suffix("\\end{pmatrix}"))
    {
        return parse_matrix(inner, depth, None);
    }
    // a scalar times a matrix: `2\begin{pmatrix}…`, `-\begin{pmatrix}…`, `\frac12\cdot\begin…`
    if let Some(p) = s.find("\\begin{pmatrix}") {
        if p > 0 && top_commas.len() == 1 {
            if let Some(inner) = s[p..]
                .strip_prefix("\\begin{pmatrix}")
                .and_then(|r| r.strip_suffix("\\end{pmatrix}"))
            {
                let k = s[..p]
                    .strip_suffix("\\cdot")
                    .or_else(|| s[..p].strip_suffix("\\times"))
                    .or_else(|| s[..p].strip_suffix('*'))
                    .unwrap_or(&s[..p]);
                let k = match k {
                    "-" => "-1",
                    "+" => "1",
                    k => k,
                };
                if !inner.contains("\\begin") && latex::parse_expr(k).is_some() {
                    return parse_matrix(inner, depth, Some(k));
                }
            }
        }
    }
    if top_commas.len() > 1 {
        if let Some(v) = thousands_number(s) {
            return Form::Num(v, s.contains('.'));
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
    if let Some(ivs) = parse_inequality(s, depth) {
        return Form::Ivs(ivs);
    }
    if let Some(sides) = split_top(s, "=") {
        if sides.len() == 2 {
            return parse_equation(sides[0], sides[1], depth);
        }
        if sides.len() > 2 {
            return Form::Text;
        }
    }
    if let Some(body) = s.strip_suffix("\\%") {
        // kept only after a proper fraction by `strip_string`: that fraction of a percent
        return match parse_form(body, depth + 1) {
            Form::Num(v, d) => v.div(Num::int(100)).map_or(Form::Text, |v| Form::Num(v, d)),
            _ => Form::Text,
        };
    }
    if let Some(f) = base_number(s) {
        return f;
    }
    if let Some(v) = scientific(s) {
        return Form::Num(v, s.contains('.'));
    }
    match latex::parse_expr(s) {
        Some(e) => {
            let vars = e.vars();
            if vars.is_empty() {
                match e.eval(&|_| None) {
                    Some(v) => Form::Num(v, has_decimal(s)),
                    None => Form::Text,
                }
            } else if vars.len() == 1 && vars[0] == "i" {
                match e.eval_complex() {
                    Some((re, im)) if latex::is_zero(im) => Form::Num(re, has_decimal(s)),
                    Some((re, im)) => Form::Complex(re, im),
                    None => Form::Expr { expr: Box::new(e) },
                }
            } else {
                Form::Expr { expr: Box::new(e) }
            }
        }
        None => Form::Text,
    }
}

/// A digit string with a decimal fraction: `0.6667`, `12.5` (not `0.\overline{6}`).
fn has_decimal(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len()).any(|i| b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
}

/// Plain-text scientific notation `3.5e-4`, `1E6`: exact.
fn scientific(s: &str) -> Option<Num> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (m, e) = body.split_once(['e', 'E'])?;
    if m.is_empty() || !m.bytes().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mant = latex::parse_decimal(m)?;
    let exp: i128 = e.parse().ok()?;
    let v = mant.mul(Num::int(10).pow(Num::int(exp))?)?;
    if s.starts_with('-') {
        v.neg()
    } else {
        Some(v)
    }
}

/// `lhs = rhs`: an equation (see [`Form::Eq`]), or a tuple of assignments
/// `(a,b,c) = (2,-7,5)`.
fn parse_equation(l: &str, r: &str, depth: u32) -> Form {
    // `(a,b) = (1,2)`: the tuple of `a=1`, `b=2`
    if encloses(l) && encloses(r) && l.starts_with('(') && r.starts_with('(') {
        if let (Some(ln), Some(rv)) = (
            split_top(&l[1..l.len() - 1], ","),
            split_top(&r[1..r.len() - 1], ","),
        ) {
            if ln.len() > 1 && ln.len() == rv.len() {
                return Form::Seq {
                    open: '(',
                    close: ')',
                    items: ln
                        .iter()
                        .zip(&rv)
                        .map(|(n, v)| Elem::parse(&format!("{n}={v}"), depth + 1))
                        .collect(),
                };
            }
        }
    }
    let (le, re) = (latex::parse_expr(l), latex::parse_expr(r));
    let lone = |e: &Option<Expr>, other: &Option<Expr>| -> Option<String> {
        match e {
            Some(Expr::Var(v)) if other.as_ref().is_none_or(|o| !o.vars().contains(v)) => {
                Some(v.clone())
            }
            _ => None,
        }
    };
    let value = match (lone(&le, &re), lone(&re, &le)) {
        (Some(v), _) => Some((v, Box::new(Elem::parse(r, depth + 1)))),
        (None, Some(v)) => Some((v, Box::new(Elem::parse(l, depth + 1)))),
        _ => None,
    };
    let sides = match (le, re) {
        (Some(a), Some(b)) if !a.vars().is_empty() || !b.vars().is_empty() => {
            Some((Box::new(a), Box::new(b)))
        }
        _ => None,
    };
    if sides.is_none() && value.is_none() {
        return Form::Text;
    }
    Form::Eq { sides, value }
}

/// A relation operator at byte `i`: (length, less-than, strict).
fn relation_at(b: &[u8], i: usize) -> Option<(usize, bool, bool)> {
    let rest = &b[i..];
    for (op, less, strict) in [
        (&b"\\le"[..], true, false),
        (&b"\\ge"[..], false, false),
        (&b"\\lt"[..], true, true),
        (&b"\\gt"[..], false, true),
        (&b"<="[..], true, false),
        (&b">="[..], false, false),
        (&b"<"[..], true, true),
        (&b">"[..], false, true),
    ] {
        if rest.starts_with(op) {
            // `\left`, `\geq` are normalised away; any other longer command is not a relation
            if op[0] == b'\\' && rest.get(3).is_some_and(u8::is_ascii_alphabetic) {
                let word = rest[1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .count();
                // `\lex` (a relation glued to the variable `x` once spaces are gone) is allowed
                if word != 3 {
                    return None;
                }
            }
            return Some((op.len(), less, strict));
        }
    }
    None
}

/// `-2 \le x \le 7`, `0 < y < 1`, `x > 3`, `5 \ge x`: the set of reals it describes.
fn parse_inequality(s: &str, depth: u32) -> Option<Vec<Iv>> {
    if !s.contains(['<', '>'])
        && !s.contains("\\le")
        && !s.contains("\\ge")
        && !s.contains("\\lt")
        && !s.contains("\\gt")
    {
        return None;
    }
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let mut ops = Vec::new();
    let (mut level, mut last, mut i) = (0i64, 0, 0);
    while i < b.len() {
        if opens(b[i]) {
            level += 1;
        } else if closes(b[i]) {
            level -= 1;
        } else if level == 0 {
            if let Some((len, less, strict)) = relation_at(b, i) {
                parts.push(&s[last..i]);
                ops.push((less, strict));
                i += len;
                last = i;
                if ops.len() > 2 {
                    return None;
                }
                continue;
            }
        }
        i += 1;
    }
    parts.push(&s[last..]);
    let var = |p: &str| matches!(latex::parse_expr(p), Some(Expr::Var(_)));
    let bound = |p: &str| -> Option<Bound> {
        match parse_form(p, depth + 1) {
            Form::Num(v, _) => Some(Bound::fin(v)),
            Form::Inf(pos) => Some(Bound::inf(pos)),
            _ => None,
        }
    };
    let iv = match (parts.len(), ops.as_slice()) {
        (2, [(less, strict)]) => {
            // `x < c` or `c < x`
            let (c, less) = if var(parts[0]) {
                (bound(parts[1])?, *less)
            } else if var(parts[1]) {
                (bound(parts[0])?, !*less)
            } else {
                return None;
            };
            if less {
                Iv::new(Bound::inf(false), false, c, !strict)
            } else {
                Iv::new(c, !strict, Bound::inf(true), false)
            }
        }
        (3, [(l1, s1), (l2, s2)]) if l1 == l2 && var(parts[1]) => {
            let (a, c) = (bound(parts[0])?, bound(parts[2])?);
            if *l1 {
                Iv::new(a, !s1, c, !s2)
            } else {
                Iv::new(c, !s2, a, !s1)
            }
        }
        _ => return None,
    };
    Some(canonical(vec![iv]))
}

/// Cells of a `pmatrix`, each multiplied by `scalar` when there is one.
fn parse_matrix(inner: &str, depth: u32, scalar: Option<&str>) -> Form {
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
        cells.extend(rc.iter().map(|c| match scalar {
            Some(k) => Elem::parse(&format!("{{{k}}}\\cdot{{{}}}", c.trim()), depth + 1),
            None => Elem::parse(c.trim(), depth + 1),
        }));
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

/// Below this, a floating-point result is rounding noise around an exact 0 (`\sin\pi`).
const FLOAT_ZERO: f64 = 1e-14;

/// Two numbers, `xd` / `yd` telling whether each was written with a decimal fraction:
/// exact rationals exactly; a float (irrational arithmetic) within `rel_tol`; a decimal within
/// `approximate` when that is on (every number with `approximate_all`). Integers are otherwise
/// never approximate.
fn num_close(x: Num, y: Num, xd: bool, yd: bool, opts: &GradeOptions) -> bool {
    let exact = match (x, y) {
        (Num::R(a, b), Num::R(c, d)) => {
            if a == c && b == d {
                return true;
            }
            true
        }
        _ => false,
    };
    let (fx, fy) = (x.to_f64(), y.to_f64());
    if !exact
        && (isclose(fx, fy, opts.rel_tol)
            || (fx.abs().max(fy.abs()) < FLOAT_ZERO && (fx == 0.0 || fy == 0.0)))
    {
        return true;
    }
    match opts.approximate {
        Some(tol) => (xd || yd || opts.approximate_all) && isclose(fx, fy, tol),
        None => false,
    }
}

fn num_eq(x: Num, y: Num, xd: bool, yd: bool, opts: &GradeOptions) -> bool {
    if num_close(x, y, xd, yd, opts) {
        return true;
    }
    if opts.percent_rule {
        let hundred = Num::int(100);
        for v in [y.mul(hundred), y.div(hundred)].into_iter().flatten() {
            if num_close(x, v, xd, yd, opts) {
                return true;
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Sets of reals: intervals, unions, differences, inequalities

/// An interval end: a finite value (exact where possible) or ±∞.
#[derive(Clone, Copy, Debug)]
struct Bound {
    v: f64,
    n: Option<Num>,
}

impl Bound {
    fn fin(n: Num) -> Bound {
        Bound {
            v: n.to_f64(),
            n: Some(n),
        }
    }
    fn inf(pos: bool) -> Bound {
        Bound {
            v: if pos {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            },
            n: None,
        }
    }
    fn same(&self, o: &Bound) -> bool {
        match (self.n, o.n) {
            (Some(Num::R(a, b)), Some(Num::R(c, d))) => a == c && b == d,
            (Some(_), Some(_)) => isclose(self.v, o.v, 1e-9),
            (None, None) => self.v == o.v,
            _ => false,
        }
    }
    fn below(&self, o: &Bound) -> bool {
        !self.same(o) && self.v < o.v
    }
}

/// An interval of reals; a point is `[p, p]`. Ends at ±∞ are open.
#[derive(Clone, Copy, Debug)]
struct Iv {
    lo: Bound,
    lc: bool,
    hi: Bound,
    hc: bool,
}

impl Iv {
    fn new(lo: Bound, lc: bool, hi: Bound, hc: bool) -> Iv {
        Iv {
            lc: lc && lo.n.is_some(),
            hc: hc && hi.n.is_some(),
            lo,
            hi,
        }
    }
    fn is_empty(&self) -> bool {
        !(self.lo.below(&self.hi) || (self.lo.same(&self.hi) && self.lc && self.hc))
    }
}

/// Sorted, merged, without empty pieces.
fn canonical(mut v: Vec<Iv>) -> Vec<Iv> {
    v.retain(|i| !i.is_empty());
    v.sort_by(|a, b| {
        a.lo.v
            .partial_cmp(&b.lo.v)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.lc.cmp(&a.lc))
    });
    let mut out: Vec<Iv> = Vec::with_capacity(v.len());
    for i in v {
        if let Some(cur) = out.last_mut() {
            let touches = i.lo.below(&cur.hi) || (i.lo.same(&cur.hi) && (cur.hc || i.lc));
            if touches {
                if cur.hi.below(&i.hi) {
                    cur.hi = i.hi;
                    cur.hc = i.hc;
                } else if cur.hi.same(&i.hi) {
                    cur.hc |= i.hc;
                }
                continue;
            }
        }
        out.push(i);
    }
    out
}

/// `a \ b` for one interval of each.
fn iv_minus(a: Iv, b: Iv, out: &mut Vec<Iv>) {
    let disjoint = |x: &Iv, y: &Iv| x.hi.below(&y.lo) || (x.hi.same(&y.lo) && !(x.hc && y.lc));
    if disjoint(&a, &b) || disjoint(&b, &a) {
        out.push(a);
        return;
    }
    out.push(Iv::new(a.lo, a.lc, b.lo, !b.lc));
    out.push(Iv::new(b.hi, !b.hc, a.hi, a.hc));
}

fn ivs_minus(a: Vec<Iv>, b: &[Iv]) -> Vec<Iv> {
    let mut cur = a;
    for &y in b {
        let mut next = Vec::with_capacity(cur.len() + 1);
        for x in cur {
            iv_minus(x, y, &mut next);
        }
        cur = canonical(next);
    }
    cur
}

fn bound_of(f: &Form) -> Option<Bound> {
    match f {
        Form::Num(v, _) => Some(Bound::fin(*v)),
        Form::Inf(pos) => Some(Bound::inf(*pos)),
        _ => None,
    }
}

const REALS: &[&str] = &["\\mathbb{R}", "\\mathbbR", "\\R", "\\mathbb{R}^1"];

/// True if the answer is written as a set of reals (a union, a difference, an inequality, ℝ):
/// then it is compared as one, see [`to_ivs`].
fn is_real_set(norm: &str, f: &Form) -> bool {
    match f {
        Form::Ivs(_) | Form::Minus(..) | Form::Union(_) => true,
        Form::List(items) => items
            .first()
            .is_some_and(|e| matches!(e.form, Form::Ivs(_))),
        _ => REALS.contains(&norm),
    }
}

/// The canonical intervals of a set of reals, if the answer is one.
fn to_ivs(norm: &str, f: &Form, depth: u32) -> Option<Vec<Iv>> {
    if depth > MAX_FORM_DEPTH {
        return None;
    }
    if REALS.contains(&norm) {
        return Some(vec![Iv::new(
            Bound::inf(false),
            false,
            Bound::inf(true),
            false,
        )]);
    }
    let all = |items: &[Elem]| -> Option<Vec<Iv>> {
        let mut v = Vec::new();
        for e in items {
            v.extend(to_ivs(&e.norm, &e.form, depth + 1)?);
        }
        Some(canonical(v))
    };
    match f {
        Form::Ivs(v) => Some(v.clone()),
        Form::Num(v, _) => Some(vec![Iv::new(Bound::fin(*v), true, Bound::fin(*v), true)]),
        Form::Seq { open, close, items } if items.len() == 2 && *open != '{' => {
            let (lo, hi) = (bound_of(&items[0].form)?, bound_of(&items[1].form)?);
            if hi.below(&lo) {
                return None;
            }
            Some(canonical(vec![Iv::new(
                lo,
                *open == '[',
                hi,
                *close == ']',
            )]))
        }
        Form::Set(items) => all(items),
        Form::Union(items) => all(items),
        Form::List(items) if items.iter().all(|e| matches!(e.form, Form::Ivs(_))) => all(items),
        Form::Minus(a, b) => {
            let x = to_ivs(&a.norm, &a.form, depth + 1)?;
            let y = to_ivs(&b.norm, &b.form, depth + 1)?;
            Some(ivs_minus(x, &y))
        }
        _ => None,
    }
}

fn ivs_eq(a: &[Iv], b: &[Iv]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.lo.same(&y.lo) && x.hi.same(&y.hi) && x.lc == y.lc && x.hc == y.hc)
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
        Form::Num(n, _) => Some(n.to_f64()),
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
    if depth <= MAX_FORM_DEPTH && (is_real_set(an, af) || is_real_set(bn, bf)) {
        if let (Some(x), Some(y)) = (to_ivs(an, af, depth), to_ivs(bn, bf, depth)) {
            return ivs_eq(&x, &y);
        }
    }
    form_eq(af, bf, opts, depth)
}

/// Variables of a form that can be the other side of `v = …`.
fn mentions(f: &Form, v: &str) -> bool {
    match f {
        Form::Expr { expr } => expr.vars().iter().any(|x| x == v),
        _ => false,
    }
}

/// `v = value` against a form that is not an equation.
fn value_eq(
    value: &Option<(String, Box<Elem>)>,
    other: &Form,
    opts: &GradeOptions,
    depth: u32,
) -> bool {
    match value {
        Some((v, e)) => {
            !mentions(other, v)
                && !matches!(other, Form::Text)
                && form_eq(&e.form, other, opts, depth + 1)
        }
        None => false,
    }
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
        (Num(x, xd), Num(y, yd)) => num_eq(*x, *y, *xd, *yd, opts),
        (Num(..) | Expr { .. }, Num(..) | Expr { .. }) => sampled_eq(a, b, opts),
        (Complex(a1, b1), Complex(a2, b2)) => {
            num_close(*a1, *a2, false, false, opts) && num_close(*b1, *b2, false, false, opts)
        }
        (Ivs(x), Ivs(y)) => ivs_eq(x, y),
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
        (Base { digits, .. }, Num(n, _)) | (Num(n, _), Base { digits, .. }) => n
            .as_integer()
            .is_some_and(|i| i >= 0 && i.to_string() == *digits),
        (
            Eq {
                sides: s1,
                value: v1,
            },
            Eq {
                sides: s2,
                value: v2,
            },
        ) => {
            let by_value = match (v1, v2) {
                (Some((x, e1)), Some((y, e2))) => {
                    x == y && elem_eq(&e1.norm, &e1.form, &e2.norm, &e2.form, opts, depth + 1)
                }
                _ => false,
            };
            by_value
                || match (s1, s2) {
                    (Some((l1, r1)), Some((l2, r2))) => equations_eq((l1, r1), (l2, r2), opts),
                    _ => false,
                }
        }
        (Eq { value, .. }, other) | (other, Eq { value, .. }) => {
            value_eq(value, other, opts, depth)
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
        assert!(matches!(form("42"), Form::Num(Num::R(42, 1), false)));
        assert!(matches!(form("1,234"), Form::Num(Num::R(1234, 1), false)));
        assert!(matches!(
            form("\\frac{1}{2}"),
            Form::Num(Num::R(1, 2), false)
        ));
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
