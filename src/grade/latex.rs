//! A small, bounded recursive-descent parser and evaluator for the LaTeX arithmetic that appears
//! in final answers (`\frac{3\sqrt{2}}{4}`, `2\pi`, `x^2+2x+1`, `\binom{5}{2}`, ...).
//!
//! Safety on untrusted input:
//! - recursion depth is bounded by [`MAX_DEPTH`] (parse fails beyond it),
//! - callers only hand in short strings (see `equiv::MAX_PARSE_LEN`), so trees are small,
//! - arithmetic is exact on `i128` rationals with overflow checks, falling back to `f64`;
//!   integer powers are exact only for exponents up to [`MAX_EXACT_EXP`], everything else is a
//!   single `powf`, and every float result must be finite — there is no big-number work.

use std::f64::consts::PI;

/// Bound on the recursion of the descent: each bracket level costs 2 (group + primary), each
/// extra sign, exponent or unbraced argument 1, so about 64 levels of nesting are accepted.
pub(crate) const MAX_DEPTH: u32 = 128;
/// Integer exponents up to this magnitude are tried exactly on rationals.
const MAX_EXACT_EXP: u128 = 512;

/// A numeric value: an exact reduced rational (denominator > 0) or a finite float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    R(i128, i128),
    F(f64),
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl Num {
    /// Exact `n/d`, reduced; `None` on zero denominator or if the sign cannot be normalised.
    pub(crate) fn rat(n: i128, d: i128) -> Option<Num> {
        if d == 0 {
            return None;
        }
        let (n, d) = if d < 0 {
            (n.checked_neg()?, d.checked_neg()?)
        } else {
            (n, d)
        };
        let g = gcd(n.unsigned_abs(), d.unsigned_abs());
        // g divides d > 0, so g <= i128::MAX and the casts are exact.
        Some(Num::R(n / g as i128, d / g as i128))
    }

    /// `n/d` exactly when possible, else as a float.
    fn ratio(n: i128, d: i128) -> Option<Num> {
        if d == 0 {
            return None;
        }
        Num::rat(n, d).or_else(|| Num::float(n as f64 / d as f64))
    }

    pub(crate) fn int(n: i128) -> Num {
        Num::R(n, 1)
    }

    /// A float value, `None` unless finite.
    pub(crate) fn float(x: f64) -> Option<Num> {
        x.is_finite().then_some(Num::F(x))
    }

    pub(crate) fn to_f64(self) -> f64 {
        match self {
            Num::R(n, d) => n as f64 / d as f64,
            Num::F(x) => x,
        }
    }

    pub(crate) fn as_integer(self) -> Option<i128> {
        match self {
            Num::R(n, 1) => Some(n),
            _ => None,
        }
    }

    pub(crate) fn add(self, o: Num) -> Option<Num> {
        if let (Num::R(a, b), Num::R(c, d)) = (self, o) {
            let exact = (|| {
                let n = a.checked_mul(d)?.checked_add(c.checked_mul(b)?)?;
                Num::rat(n, b.checked_mul(d)?)
            })();
            if exact.is_some() {
                return exact;
            }
        }
        Num::float(self.to_f64() + o.to_f64())
    }

    pub(crate) fn neg(self) -> Option<Num> {
        match self {
            Num::R(n, d) => match n.checked_neg() {
                Some(m) => Some(Num::R(m, d)),
                None => Num::float(-self.to_f64()),
            },
            Num::F(x) => Some(Num::F(-x)),
        }
    }

    pub(crate) fn sub(self, o: Num) -> Option<Num> {
        self.add(o.neg()?)
    }

    pub(crate) fn mul(self, o: Num) -> Option<Num> {
        if let (Num::R(a, b), Num::R(c, d)) = (self, o) {
            // cross-reduce first to keep numbers small
            let g1 = gcd(a.unsigned_abs(), d.unsigned_abs()).max(1) as i128;
            let g2 = gcd(c.unsigned_abs(), b.unsigned_abs()).max(1) as i128;
            let exact =
                (|| Num::rat((a / g1).checked_mul(c / g2)?, (b / g2).checked_mul(d / g1)?))();
            if exact.is_some() {
                return exact;
            }
        }
        Num::float(self.to_f64() * o.to_f64())
    }

    pub(crate) fn recip(self) -> Option<Num> {
        match self {
            Num::R(0, _) => None,
            Num::R(n, d) => Num::ratio(d, n),
            Num::F(x) => {
                if x == 0.0 {
                    None
                } else {
                    Num::float(1.0 / x)
                }
            }
        }
    }

    pub(crate) fn div(self, o: Num) -> Option<Num> {
        self.mul(o.recip()?)
    }

    /// `self^e`. Exact for rational bases with small integer exponents, and for rational
    /// exponents `p/q` when the base is a perfect `q`-th power; otherwise one `powf`.
    pub(crate) fn pow(self, e: Num) -> Option<Num> {
        match (self, e) {
            (Num::R(bn, bd), Num::R(en, 1)) if en.unsigned_abs() <= MAX_EXACT_EXP => {
                if let Some(r) = rat_powi(bn, bd, en) {
                    return Some(r);
                }
            }
            (Num::R(..), Num::R(p, q)) if q <= 16 && p.unsigned_abs() <= MAX_EXACT_EXP => {
                if let Some(Num::R(rn, rd)) = self.root_exact(q as u32) {
                    if let Some(r) = rat_powi(rn, rd, p) {
                        return Some(r);
                    }
                }
            }
            _ => {}
        }
        let (b, x) = (self.to_f64(), e.to_f64());
        // Odd integer roots of negative numbers, e.g. (-8)^(1/3): keep the real root.
        if b < 0.0 {
            if let Num::R(p, q) = e {
                if q % 2 == 1 {
                    let mag = (-b).powf(x);
                    return Num::float(if p % 2 == 0 { mag } else { -mag });
                }
            }
        }
        Num::float(b.powf(x))
    }

    /// Exact `k`-th root of a rational, if both numerator and denominator are perfect powers.
    fn root_exact(self, k: u32) -> Option<Num> {
        let Num::R(n, d) = self else { return None };
        if k == 0 {
            return None;
        }
        if k == 1 {
            return Some(self);
        }
        if n < 0 && k.is_multiple_of(2) {
            return None;
        }
        let rn = iroot(n.unsigned_abs(), k)?;
        let rd = iroot(d.unsigned_abs(), k)?;
        let rn = i128::try_from(rn).ok()?;
        let rd = i128::try_from(rd).ok()?;
        Num::rat(if n < 0 { -rn } else { rn }, rd)
    }

    /// Real `k`-th root (exact when possible); even roots of negatives are undefined.
    pub(crate) fn root(self, k: Num) -> Option<Num> {
        if let Some(ki) = k.as_integer() {
            if (1..=64).contains(&ki) {
                let ki = ki as u32;
                if let Some(r) = self.root_exact(ki) {
                    return Some(r);
                }
                let x = self.to_f64();
                if x < 0.0 {
                    if ki.is_multiple_of(2) {
                        return None;
                    }
                    return Num::float(-(-x).powf(1.0 / ki as f64));
                }
                return Num::float(x.powf(1.0 / ki as f64));
            }
        }
        let x = self.to_f64();
        if x < 0.0 {
            return None;
        }
        Num::float(x.powf(1.0 / k.to_f64()))
    }

    pub(crate) fn factorial(self) -> Option<Num> {
        let n = self.as_integer()?;
        if !(0..=170).contains(&n) {
            return None;
        }
        let mut acc: i128 = 1;
        for i in 2..=n {
            match acc.checked_mul(i) {
                Some(v) => acc = v,
                None => {
                    let mut f = acc as f64;
                    for j in i..=n {
                        f *= j as f64;
                    }
                    return Num::float(f);
                }
            }
        }
        Some(Num::int(acc))
    }

    pub(crate) fn binom(self, k: Num) -> Option<Num> {
        let n = self.as_integer()?;
        let k = k.as_integer()?;
        if n < 0 || k < 0 || k > n || n > 100_000 {
            return None;
        }
        let k = k.min(n - k);
        let mut acc: i128 = 1;
        for i in 0..k {
            // acc * (n - i) / (i + 1) is always an integer
            match acc.checked_mul(n - i) {
                Some(v) => acc = v / (i + 1),
                None => {
                    let mut f = acc as f64;
                    for j in i..k {
                        f = f * (n - j) as f64 / (j + 1) as f64;
                    }
                    return Num::float(f);
                }
            }
        }
        Some(Num::int(acc))
    }
}

fn rat_powi(bn: i128, bd: i128, e: i128) -> Option<Num> {
    let (mut n, mut d) = (bn, bd);
    if e < 0 {
        if n == 0 {
            return None;
        }
        std::mem::swap(&mut n, &mut d);
    }
    let mut k = e.unsigned_abs();
    let (mut rn, mut rd): (i128, i128) = (1, 1);
    while k > 0 {
        if k & 1 == 1 {
            rn = rn.checked_mul(n)?;
            rd = rd.checked_mul(d)?;
        }
        k >>= 1;
        if k > 0 {
            n = n.checked_mul(n)?;
            d = d.checked_mul(d)?;
        }
    }
    Num::rat(rn, rd)
}

/// Exact integer `k`-th root of `x`, if `x` is a perfect `k`-th power.
fn iroot(x: u128, k: u32) -> Option<u128> {
    if x < 2 {
        return Some(x);
    }
    let est = (x as f64).powf(1.0 / k as f64).round();
    if !est.is_finite() || est < 0.0 {
        return None;
    }
    let est = est as u128;
    [est.saturating_sub(1), est, est + 1]
        .into_iter()
        .find(|&c| c.checked_pow(k) == Some(x))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    Log10,
    Exp,
    Floor,
    Ceil,
    Abs,
}

impl Func {
    fn from_name(name: &str) -> Option<Func> {
        Some(match name {
            "sin" => Func::Sin,
            "cos" => Func::Cos,
            "tan" => Func::Tan,
            "sec" => Func::Sec,
            "csc" => Func::Csc,
            "cot" => Func::Cot,
            "arcsin" => Func::Asin,
            "arccos" => Func::Acos,
            "arctan" => Func::Atan,
            "sinh" => Func::Sinh,
            "cosh" => Func::Cosh,
            "tanh" => Func::Tanh,
            "ln" => Func::Ln,
            "log" => Func::Log10,
            "exp" => Func::Exp,
            _ => return None,
        })
    }

    fn apply(self, v: Num) -> Option<Num> {
        match self {
            Func::Abs => match v {
                Num::R(n, d) => Num::ratio(n.checked_abs()?, d),
                Num::F(x) => Num::float(x.abs()),
            },
            Func::Floor | Func::Ceil => {
                if let Num::R(n, d) = v {
                    let q = n.div_euclid(d);
                    let exact = n.rem_euclid(d) == 0;
                    return Some(Num::int(if self == Func::Ceil && !exact {
                        q + 1
                    } else {
                        q
                    }));
                }
                let x = v.to_f64();
                Num::float(if self == Func::Floor {
                    x.floor()
                } else {
                    x.ceil()
                })
            }
            _ => {
                let x = v.to_f64();
                let y = match self {
                    Func::Sin => x.sin(),
                    Func::Cos => x.cos(),
                    Func::Tan => x.tan(),
                    Func::Sec => 1.0 / x.cos(),
                    Func::Csc => 1.0 / x.sin(),
                    Func::Cot => 1.0 / x.tan(),
                    Func::Asin => x.asin(),
                    Func::Acos => x.acos(),
                    Func::Atan => x.atan(),
                    Func::Sinh => x.sinh(),
                    Func::Cosh => x.cosh(),
                    Func::Tanh => x.tanh(),
                    Func::Ln => {
                        if x <= 0.0 {
                            return None;
                        }
                        x.ln()
                    }
                    Func::Log10 => {
                        if x <= 0.0 {
                            return None;
                        }
                        x.log10()
                    }
                    Func::Exp => x.exp(),
                    Func::Abs | Func::Floor | Func::Ceil => unreachable!("handled above"),
                };
                Num::float(y)
            }
        }
    }
}

/// Parsed arithmetic expression.
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    Lit(Num),
    Pi,
    Var(String),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    /// `Root(index, radicand)`
    Root(Box<Expr>, Box<Expr>),
    Func(Func, Box<Expr>),
    /// `Log(base, arg)`
    Log(Box<Expr>, Box<Expr>),
    Fact(Box<Expr>),
    Binom(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// Evaluate; `var` gives each variable's value (or `None` to fail, for constant evaluation).
    pub(crate) fn eval(&self, var: &dyn Fn(&str) -> Option<f64>) -> Option<Num> {
        Some(match self {
            Expr::Lit(n) => *n,
            Expr::Pi => Num::F(PI),
            Expr::Var(name) => Num::float(var(name)?)?,
            Expr::Neg(a) => a.eval(var)?.neg()?,
            Expr::Add(a, b) => a.eval(var)?.add(b.eval(var)?)?,
            Expr::Sub(a, b) => a.eval(var)?.sub(b.eval(var)?)?,
            Expr::Mul(a, b) => a.eval(var)?.mul(b.eval(var)?)?,
            Expr::Div(a, b) => a.eval(var)?.div(b.eval(var)?)?,
            Expr::Pow(a, b) => a.eval(var)?.pow(b.eval(var)?)?,
            Expr::Root(k, x) => x.eval(var)?.root(k.eval(var)?)?,
            Expr::Func(f, a) => f.apply(a.eval(var)?)?,
            Expr::Log(b, a) => {
                let (b, a) = (b.eval(var)?.to_f64(), a.eval(var)?.to_f64());
                if b <= 0.0 || b == 1.0 || a <= 0.0 {
                    return None;
                }
                Num::float(a.ln() / b.ln())?
            }
            Expr::Fact(a) => a.eval(var)?.factorial()?,
            Expr::Binom(n, k) => n.eval(var)?.binom(k.eval(var)?)?,
        })
    }

    /// Evaluate as a complex constant `(re, im)`, where the variable `i` is the imaginary unit
    /// and no other variable may occur. Exact on rationals where the real evaluation is.
    /// Powers need an integer exponent (|k| ≤ 64) when the base is not real; `\sqrt` of a
    /// negative real is the principal root `i·\sqrt{-x}`; functions need real arguments.
    pub(crate) fn eval_complex(&self) -> Option<(Num, Num)> {
        let zero = Num::int(0);
        let real = |e: &Expr| -> Option<Num> {
            let (r, i) = e.eval_complex()?;
            is_zero(i).then_some(r)
        };
        Some(match self {
            Expr::Var(v) if v == "i" => (zero, Num::int(1)),
            Expr::Var(_) => return None,
            Expr::Lit(_) | Expr::Pi => (self.eval(&|_| None)?, zero),
            Expr::Neg(a) => {
                let (r, i) = a.eval_complex()?;
                (r.neg()?, i.neg()?)
            }
            Expr::Add(a, b) | Expr::Sub(a, b) => {
                let ((p, q), (r, t)) = (a.eval_complex()?, b.eval_complex()?);
                if matches!(self, Expr::Add(..)) {
                    (p.add(r)?, q.add(t)?)
                } else {
                    (p.sub(r)?, q.sub(t)?)
                }
            }
            Expr::Mul(a, b) => cmul(a.eval_complex()?, b.eval_complex()?)?,
            Expr::Div(a, b) => cdiv(a.eval_complex()?, b.eval_complex()?)?,
            Expr::Pow(a, b) => {
                let base = a.eval_complex()?;
                let e = real(b)?;
                if is_zero(base.1) {
                    (base.0.pow(e)?, zero)
                } else {
                    let k = e.as_integer().filter(|k| k.abs() <= 64)?;
                    let mut acc = (Num::int(1), zero);
                    for _ in 0..k.abs() {
                        acc = cmul(acc, base)?;
                    }
                    if k < 0 {
                        cdiv((Num::int(1), zero), acc)?
                    } else {
                        acc
                    }
                }
            }
            Expr::Root(k, x) => {
                let (k, x) = (real(k)?, real(x)?);
                if k.as_integer() == Some(2) && x.to_f64() < 0.0 {
                    (zero, x.neg()?.root(k)?)
                } else {
                    (x.root(k)?, zero)
                }
            }
            Expr::Func(..) | Expr::Log(..) | Expr::Fact(_) | Expr::Binom(..) => {
                if self.vars().is_empty() {
                    (self.eval(&|_| None)?, zero)
                } else {
                    return None;
                }
            }
        })
    }

    /// Sorted, de-duplicated variable names.
    pub(crate) fn vars(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_vars(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect_vars(&self, out: &mut Vec<String>) {
        match self {
            Expr::Lit(_) | Expr::Pi => {}
            Expr::Var(v) => out.push(v.clone()),
            Expr::Neg(a) | Expr::Func(_, a) | Expr::Fact(a) => a.collect_vars(out),
            Expr::Add(a, b)
            | Expr::Sub(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Pow(a, b)
            | Expr::Root(a, b)
            | Expr::Log(a, b)
            | Expr::Binom(a, b) => {
                a.collect_vars(out);
                b.collect_vars(out);
            }
        }
    }
}

pub(crate) fn is_zero(n: Num) -> bool {
    match n {
        Num::R(a, _) => a == 0,
        Num::F(x) => x == 0.0,
    }
}

fn cmul((a, b): (Num, Num), (c, d): (Num, Num)) -> Option<(Num, Num)> {
    Some((a.mul(c)?.sub(b.mul(d)?)?, a.mul(d)?.add(b.mul(c)?)?))
}

fn cdiv((a, b): (Num, Num), (c, d): (Num, Num)) -> Option<(Num, Num)> {
    let den = c.mul(c)?.add(d.mul(d)?)?;
    if is_zero(den) {
        return None;
    }
    let re = a.mul(c)?.add(b.mul(d)?)?.div(den)?;
    let im = b.mul(c)?.sub(a.mul(d)?)?.div(den)?;
    Some((re, im))
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// Digits with at most one decimal point.
    Num(String),
    /// An exact value written in a form the number scanner resolves itself: a repeating decimal
    /// `0.\overline{6}`, `2.1\overline{3}` (also `\bar{..}` / `\dot{..}`).
    Lit(Num),
    /// One ASCII letter (a variable).
    Letter(char),
    /// A run of 3+ letters that is neither a function nor `pi`: not arithmetic.
    Word,
    /// A backslash command (name without the backslash) or a bare function name.
    Cmd(String),
    Sym(char),
}

const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

const COMMANDS: &[&str] = &[
    "frac",
    "dfrac",
    "tfrac",
    "cfrac",
    "sqrt",
    "pi",
    "cdot",
    "times",
    "div",
    "ast",
    "infty",
    "sin",
    "cos",
    "tan",
    "sec",
    "csc",
    "cot",
    "arcsin",
    "arccos",
    "arctan",
    "sinh",
    "cosh",
    "tanh",
    "ln",
    "log",
    "exp",
    "binom",
    "dbinom",
    "tbinom",
    "lfloor",
    "rfloor",
    "lceil",
    "rceil",
    "mathrm",
    "text",
    "textbf",
    "mathit",
    "mathbf",
    "operatorname",
    "pm",
    "mp",
    "cup",
    "in",
    "le",
    "ge",
    "ne",
    "lt",
    "gt",
    "circ",
    "quad",
    "qquad",
    "displaystyle",
    "cdots",
    "ldots",
    "dots",
];

/// Bare (backslash-less) function names recognised at the start of a letter run.
const BARE_FUNCS: &[&str] = &[
    "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sqrt", "sin", "cos", "tan", "sec",
    "csc", "cot", "log", "exp", "ln",
];

fn is_known_cmd(name: &str) -> bool {
    COMMANDS.contains(&name) || GREEK.contains(&name)
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = s.chars().collect();
    let mut toks = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            let mut seen_dot = false;
            while i < chars.len() {
                let d = chars[i];
                if d.is_ascii_digit() {
                    i += 1;
                } else if d == '.'
                    && !seen_dot
                    && chars.get(i + 1).is_some_and(|x| x.is_ascii_digit())
                {
                    seen_dot = true;
                    i += 1;
                } else {
                    break;
                }
            }
            // repeating decimal: `0.\overline{6}`, `2.1\overline{3}`, `1.\overline{45}`
            let dot_at = if seen_dot {
                Some(i)
            } else if chars.get(i) == Some(&'.') {
                Some(i + 1)
            } else {
                None
            };
            if let Some(at) = dot_at {
                if let Some((value, end)) = repeating_decimal(&chars[start..at.min(i)], &chars, at)
                {
                    toks.push(Tok::Lit(value));
                    i = end;
                    continue;
                }
            }
            toks.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c.is_ascii_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            let run: String = chars[start..i].iter().collect();
            push_letter_run(&run, &mut toks);
        } else if c == '\\' {
            let start = i + 1;
            let mut j = start;
            while j < chars.len() && chars[j].is_ascii_alphabetic() {
                j += 1;
            }
            if j == start {
                // backslash + one non-letter: spacing commands are dropped, others kept
                let &n = chars.get(start)?;
                i = start + 1;
                match n {
                    ',' | ';' | ':' | '!' | ' ' => {}
                    _ => toks.push(Tok::Cmd(n.to_string())),
                }
                continue;
            }
            let name: String = chars[start..j].iter().collect();
            i = j;
            if is_known_cmd(&name) {
                if !matches!(name.as_str(), "quad" | "qquad" | "displaystyle") {
                    toks.push(Tok::Cmd(name));
                }
            } else {
                // spaces were removed by normalisation: `\pir` is `\pi r`
                let prefix = (2..name.len())
                    .rev()
                    .map(|k| &name[..k])
                    .find(|p| is_known_cmd(p));
                match prefix {
                    Some(p) => {
                        toks.push(Tok::Cmd(p.to_string()));
                        push_letter_run(&name[p.len()..], &mut toks);
                    }
                    None => toks.push(Tok::Cmd(name)),
                }
            }
        } else if c.is_whitespace() {
            i += 1;
        } else {
            i += 1;
            match c {
                'π' => toks.push(Tok::Cmd("pi".into())),
                '√' => toks.push(Tok::Cmd("sqrt".into())),
                '×' => toks.push(Tok::Cmd("times".into())),
                '·' | '⋅' => toks.push(Tok::Cmd("cdot".into())),
                '÷' => toks.push(Tok::Cmd("div".into())),
                '−' | '–' => toks.push(Tok::Sym('-')),
                '∞' => toks.push(Tok::Cmd("infty".into())),
                c if c.is_ascii() => toks.push(Tok::Sym(c)),
                _ => return None,
            }
        }
    }
    Some(toks)
}

/// `digits.digits` (`head`, without the overline) followed at `at` by `\overline{d…}` (or `\bar`,
/// `\dot`): the exact rational value and the index after the closing brace.
fn repeating_decimal(head: &[char], chars: &[char], at: usize) -> Option<(Num, usize)> {
    let mut j = at;
    let mut matched = false;
    for cmd in ["\\overline{", "\\bar{", "\\dot{"] {
        let c: Vec<char> = cmd.chars().collect();
        if chars.get(j..j + c.len()) == Some(&c[..]) {
            j += c.len();
            matched = true;
            break;
        }
    }
    if !matched {
        return None;
    }
    let rep_start = j;
    while j < chars.len() && chars[j].is_ascii_digit() {
        j += 1;
    }
    if j == rep_start || chars.get(j) != Some(&'}') {
        return None;
    }
    let rep: String = chars[rep_start..j].iter().collect();
    let head: String = head.iter().collect();
    let (int, frac) = head.split_once('.').unwrap_or((head.as_str(), ""));
    if int.len() + frac.len() + rep.len() > 30 || rep.len() > 18 {
        return None;
    }
    // x = (int(I F R) - int(I F)) / (10^|F| (10^|R| - 1))
    let without: i128 = format!("0{int}{frac}").parse().ok()?;
    let with: i128 = format!("0{int}{frac}{rep}").parse().ok()?;
    let den = 10i128
        .checked_pow(frac.len() as u32)?
        .checked_mul(10i128.checked_pow(rep.len() as u32)? - 1)?;
    Some((Num::rat(with - without, den)?, j + 1))
}

fn push_letter_run(run: &str, toks: &mut Vec<Tok>) {
    if run.is_empty() {
        return;
    }
    if run == "pi" {
        toks.push(Tok::Cmd("pi".into()));
        return;
    }
    if let Some(f) = BARE_FUNCS.iter().find(|f| run.starts_with(**f)) {
        toks.push(Tok::Cmd((*f).to_string()));
        push_letter_run(&run[f.len()..], toks);
        return;
    }
    if run.len() <= 2 {
        toks.extend(run.chars().map(Tok::Letter));
    } else {
        toks.push(Tok::Word);
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: u32,
    abs_depth: u32,
}

/// Parse a whole string as one arithmetic expression. `None` if it is not one (or too deep).
pub(crate) fn parse_expr(s: &str) -> Option<Expr> {
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return None;
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        abs_depth: 0,
    };
    let e = p.expr()?;
    (p.pos == p.toks.len()).then_some(e)
}

fn bx(e: Expr) -> Box<Expr> {
    Box::new(e)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn peek_sym(&self, c: char) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == c)
    }

    fn peek_cmd(&self, names: &[&str]) -> bool {
        matches!(self.peek(), Some(Tok::Cmd(n)) if names.contains(&n.as_str()))
    }

    fn eat_sym(&mut self, c: char) -> bool {
        if self.peek_sym(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, c: char) -> Option<()> {
        self.eat_sym(c).then_some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self) -> Option<Expr> {
        self.enter()?;
        let r = self.sum();
        self.leave();
        r
    }

    fn sum(&mut self) -> Option<Expr> {
        let mut lhs = self.term()?;
        loop {
            if self.eat_sym('+') {
                lhs = Expr::Add(bx(lhs), bx(self.term()?));
            } else if self.eat_sym('-') {
                lhs = Expr::Sub(bx(lhs), bx(self.term()?));
            } else {
                return Some(lhs);
            }
        }
    }

    fn term(&mut self) -> Option<Expr> {
        let mut lhs = self.unary()?;
        loop {
            if self.eat_sym('*') || self.eat_cmd(&["cdot", "times", "ast"]) {
                lhs = Expr::Mul(bx(lhs), bx(self.unary()?));
            } else if self.eat_sym('/') || self.eat_cmd(&["div"]) {
                lhs = Expr::Div(bx(lhs), bx(self.unary()?));
            } else if self.starts_primary() {
                lhs = Expr::Mul(bx(lhs), bx(self.power()?));
            } else {
                return Some(lhs);
            }
        }
    }

    fn eat_cmd(&mut self, names: &[&str]) -> bool {
        if self.peek_cmd(names) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_)) | Some(Tok::Lit(_)) | Some(Tok::Letter(_)) | Some(Tok::Word) => true,
            Some(Tok::Sym(c)) => matches!(c, '(' | '{') || (*c == '|' && self.abs_depth == 0),
            Some(Tok::Cmd(n)) => {
                GREEK.contains(&n.as_str())
                    || Func::from_name(n).is_some()
                    || matches!(
                        n.as_str(),
                        "frac"
                            | "dfrac"
                            | "tfrac"
                            | "cfrac"
                            | "sqrt"
                            | "pi"
                            | "binom"
                            | "dbinom"
                            | "tbinom"
                            | "lfloor"
                            | "lceil"
                            | "mathrm"
                            | "text"
                            | "textbf"
                            | "mathit"
                            | "mathbf"
                    )
            }
            None => false,
        }
    }

    fn unary(&mut self) -> Option<Expr> {
        let neg = if self.eat_sym('-') {
            true
        } else if self.eat_sym('+') {
            false
        } else {
            return self.power();
        };
        self.enter()?;
        let r = self.unary();
        self.leave();
        if neg {
            r.map(|e| Expr::Neg(bx(e)))
        } else {
            r
        }
    }

    fn power(&mut self) -> Option<Expr> {
        let base = self.postfix()?;
        self.power_tail(base)
    }

    /// `base ^ exponent`, right-associative.
    fn power_tail(&mut self, base: Expr) -> Option<Expr> {
        if !self.eat_sym('^') {
            return Some(base);
        }
        self.enter()?;
        let r = (|| {
            let neg = self.eat_sym('-');
            let e = self.exponent_atom()?;
            let e = if neg { Expr::Neg(bx(e)) } else { e };
            let e = self.power_tail(e)?;
            Some(Expr::Pow(bx(base), bx(e)))
        })();
        self.leave();
        r
    }

    /// An exponent: `{expr}`, a whole number (`2^10` read as 1024), a letter or a primary.
    fn exponent_atom(&mut self) -> Option<Expr> {
        if let Some(Tok::Num(_)) = self.peek() {
            return self.number();
        }
        self.primary()
    }

    fn postfix(&mut self) -> Option<Expr> {
        let mut e = self.primary()?;
        while self.eat_sym('!') {
            e = Expr::Fact(bx(e));
        }
        Some(e)
    }

    fn number(&mut self) -> Option<Expr> {
        let Some(Tok::Num(s)) = self.peek() else {
            return None;
        };
        let v = parse_decimal(s)?;
        self.pos += 1;
        Some(Expr::Lit(v))
    }

    /// A braced group `{...}` or a single token (first digit only, as TeX reads `\frac12`).
    fn arg(&mut self) -> Option<Expr> {
        if self.eat_sym('{') {
            let e = self.expr()?;
            self.expect_sym('}')?;
            return Some(e);
        }
        if let Some(Tok::Num(s)) = self.peek() {
            let mut it = s.chars();
            let first = it.next()?;
            if !first.is_ascii_digit() {
                return None;
            }
            let rest: String = it.collect();
            if rest.is_empty() {
                self.pos += 1;
            } else {
                self.toks[self.pos] = Tok::Num(rest);
            }
            return Some(Expr::Lit(Num::int(first.to_digit(10)? as i128)));
        }
        self.enter()?;
        let r = self.primary();
        self.leave();
        r
    }

    /// Integer literal in braces or a single digit: for mixed numbers `2\frac{1}{2}`.
    fn peek_int_arg(&self, at: usize) -> Option<(i128, usize)> {
        match self.toks.get(at)? {
            Tok::Sym('{') => match (self.toks.get(at + 1)?, self.toks.get(at + 2)?) {
                (Tok::Num(s), Tok::Sym('}')) if s.bytes().all(|b| b.is_ascii_digit()) => {
                    Some((s.parse().ok()?, at + 3))
                }
                _ => None,
            },
            Tok::Num(s) if s.len() == 1 && s.bytes().all(|b| b.is_ascii_digit()) => {
                Some((s.parse().ok()?, at + 1))
            }
            _ => None,
        }
    }

    /// Integer numerator and denominator of `\frac{1}{2}`, `\frac12`, `\frac1{2}`.
    fn mixed_frac_args(&self, at: usize) -> Option<(i128, i128, usize)> {
        if let Some(Tok::Num(s)) = self.toks.get(at) {
            let d = s.as_bytes();
            if d.len() == 2 && d.iter().all(u8::is_ascii_digit) {
                return Some(((d[0] - b'0') as i128, (d[1] - b'0') as i128, at + 1));
            }
        }
        let (a, next) = self.peek_int_arg(at)?;
        let (b, end) = self.peek_int_arg(next)?;
        Some((a, b, end))
    }

    fn primary(&mut self) -> Option<Expr> {
        self.enter()?;
        let r = self.primary_inner();
        self.leave();
        r
    }

    fn primary_inner(&mut self) -> Option<Expr> {
        let tok = self.peek()?.clone();
        match tok {
            Tok::Num(s) => {
                let v = parse_decimal(&s)?;
                self.pos += 1;
                // mixed number: an integer immediately followed by \frac{int}{int}
                if v.as_integer().is_some() && self.peek_cmd(&["frac", "dfrac", "tfrac"]) {
                    if let Some((a, b, end)) = self.mixed_frac_args(self.pos + 1) {
                        if b != 0 {
                            self.pos = end;
                            return Some(Expr::Lit(v.add(Num::rat(a, b)?)?));
                        }
                    }
                }
                Some(Expr::Lit(v))
            }
            Tok::Lit(v) => {
                self.pos += 1;
                Some(Expr::Lit(v))
            }
            Tok::Letter(c) => {
                self.pos += 1;
                let mut name = c.to_string();
                self.subscript(&mut name)?;
                Some(Expr::Var(name))
            }
            Tok::Word => None,
            Tok::Sym('(') => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect_sym(')')?;
                Some(e)
            }
            Tok::Sym('[') => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect_sym(']')?;
                Some(e)
            }
            Tok::Sym('{') => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect_sym('}')?;
                Some(e)
            }
            Tok::Sym('|') => {
                self.pos += 1;
                self.abs_depth += 1;
                let e = self.expr();
                self.abs_depth -= 1;
                let e = e?;
                self.expect_sym('|')?;
                Some(Expr::Func(Func::Abs, bx(e)))
            }
            Tok::Sym(_) => None,
            Tok::Cmd(name) => {
                self.pos += 1;
                self.command(&name)
            }
        }
    }

    /// Append a subscript (`a_1`, `x_{n}`) to a variable name.
    fn subscript(&mut self, name: &mut String) -> Option<()> {
        if !self.eat_sym('_') {
            return Some(());
        }
        name.push('_');
        if self.eat_sym('{') {
            let mut depth = 1usize;
            loop {
                let t = self.toks.get(self.pos)?.clone();
                self.pos += 1;
                match t {
                    Tok::Sym('{') => depth += 1,
                    Tok::Sym('}') => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(());
                        }
                    }
                    _ => {}
                }
                push_tok_text(name, &t);
                if name.len() > 64 {
                    return None;
                }
            }
        }
        let t = self.toks.get(self.pos)?.clone();
        self.pos += 1;
        match t {
            Tok::Num(_) | Tok::Letter(_) => {
                push_tok_text(name, &t);
                Some(())
            }
            _ => None,
        }
    }

    fn command(&mut self, name: &str) -> Option<Expr> {
        match name {
            "frac" | "dfrac" | "tfrac" | "cfrac" => {
                let a = self.arg()?;
                let b = self.arg()?;
                Some(Expr::Div(bx(a), bx(b)))
            }
            "sqrt" => {
                let index = if self.eat_sym('[') {
                    let e = self.expr()?;
                    self.expect_sym(']')?;
                    e
                } else {
                    Expr::Lit(Num::int(2))
                };
                let x = self.arg()?;
                Some(Expr::Root(bx(index), bx(x)))
            }
            "pi" => Some(Expr::Pi),
            "binom" | "dbinom" | "tbinom" => {
                let n = self.arg()?;
                let k = self.arg()?;
                Some(Expr::Binom(bx(n), bx(k)))
            }
            "lfloor" | "lceil" => {
                let e = self.expr()?;
                let (close, f) = if name == "lfloor" {
                    ("rfloor", Func::Floor)
                } else {
                    ("rceil", Func::Ceil)
                };
                self.eat_cmd(&[close]).then_some(())?;
                Some(Expr::Func(f, bx(e)))
            }
            "mathrm" | "text" | "textbf" | "mathit" | "mathbf" => {
                self.expect_sym('{')?;
                let e = self.expr()?;
                self.expect_sym('}')?;
                Some(e)
            }
            n if GREEK.contains(&n) => {
                let mut v = format!("\\{n}");
                self.subscript(&mut v)?;
                Some(Expr::Var(v))
            }
            n => {
                let f = Func::from_name(n)?;
                // \log_b x
                let base = if f == Func::Log10 && self.eat_sym('_') {
                    Some(self.arg()?)
                } else {
                    None
                };
                // \sin^2 x  ==  (\sin x)^2
                let power = if self.eat_sym('^') {
                    let neg = self.eat_sym('-');
                    let e = self.exponent_atom()?;
                    Some(if neg { Expr::Neg(bx(e)) } else { e })
                } else {
                    None
                };
                let arg = self.func_arg()?;
                let applied = match base {
                    Some(b) => Expr::Log(bx(b), bx(arg)),
                    None => Expr::Func(f, bx(arg)),
                };
                Some(match power {
                    Some(p) => Expr::Pow(bx(applied), bx(p)),
                    None => applied,
                })
            }
        }
    }

    /// Function argument: a parenthesised group, or an implicit product such as `2x` in `\sin 2x`.
    fn func_arg(&mut self) -> Option<Expr> {
        self.enter()?;
        let r = (|| {
            if self.peek_sym('(') {
                let e = self.power()?;
                return Some(e);
            }
            let neg = self.eat_sym('-');
            let mut e = self.power()?;
            while self.starts_primary() && !self.peek_func() {
                e = Expr::Mul(bx(e), bx(self.power()?));
            }
            Some(if neg { Expr::Neg(bx(e)) } else { e })
        })();
        self.leave();
        r
    }

    fn peek_func(&self) -> bool {
        matches!(self.peek(), Some(Tok::Cmd(n)) if Func::from_name(n).is_some())
    }
}

fn push_tok_text(out: &mut String, t: &Tok) {
    match t {
        Tok::Num(s) => out.push_str(s),
        Tok::Lit(_) => out.push('#'),
        Tok::Letter(c) | Tok::Sym(c) => out.push(*c),
        Tok::Word => out.push('?'),
        Tok::Cmd(n) => {
            out.push('\\');
            out.push_str(n);
        }
    }
}

/// Parse `123`, `1.25`, `.5` into an exact rational (or a float if too many digits).
pub(crate) fn parse_decimal(s: &str) -> Option<Num> {
    let (int_part, frac_part) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int_trim = int_part.trim_start_matches('0');
    let frac_trim = frac_part.trim_end_matches('0');
    if int_trim.len() + frac_trim.len() <= 36 {
        let mut digits = String::with_capacity(int_trim.len() + frac_trim.len());
        digits.push_str(int_trim);
        digits.push_str(frac_trim);
        let n: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let d = 10i128.checked_pow(frac_trim.len() as u32)?;
        return Num::rat(n, d);
    }
    let joined = format!(
        "{}.{}",
        if int_part.is_empty() { "0" } else { int_part },
        if frac_part.is_empty() { "0" } else { frac_part }
    );
    Num::float(joined.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> f64 {
        parse_expr(s)
            .unwrap_or_else(|| panic!("no parse: {s}"))
            .eval(&|_| None)
            .unwrap()
            .to_f64()
    }

    fn exact(s: &str) -> Num {
        parse_expr(s).unwrap().eval(&|_| None).unwrap()
    }

    #[test]
    fn arithmetic() {
        assert_eq!(exact("1+2*3"), Num::R(7, 1));
        assert_eq!(exact("(1+2)*3"), Num::R(9, 1));
        assert_eq!(exact("2^10"), Num::R(1024, 1));
        assert_eq!(exact("2^{-2}"), Num::R(1, 4));
        assert_eq!(exact("2^3^2"), Num::R(512, 1));
        assert_eq!(exact("-3^2"), Num::R(-9, 1));
        assert_eq!(exact("\\frac{1}{2}+\\frac{1}{3}"), Num::R(5, 6));
        assert_eq!(exact("\\frac12"), Num::R(1, 2));
        assert_eq!(exact("\\frac{270}7"), Num::R(270, 7));
        assert_eq!(exact("6\\div4"), Num::R(3, 2));
        assert_eq!(exact("3\\times4"), Num::R(12, 1));
        assert_eq!(exact("3\\cdot4"), Num::R(12, 1));
        assert_eq!(exact("2(3+4)"), Num::R(14, 1));
        assert_eq!(exact("5!"), Num::R(120, 1));
        assert_eq!(exact("\\binom{5}{2}"), Num::R(10, 1));
        assert_eq!(exact(".5"), Num::R(1, 2));
        assert_eq!(exact("0.125"), Num::R(1, 8));
        assert_eq!(exact("|-3|"), Num::R(3, 1));
        assert_eq!(exact("\\lfloor 2.5 \\rfloor"), Num::R(2, 1));
        assert_eq!(exact("\\lceil 2.5 \\rceil"), Num::R(3, 1));
    }

    #[test]
    fn roots_and_constants() {
        assert_eq!(exact("\\sqrt{16}"), Num::R(4, 1));
        assert_eq!(exact("\\sqrt{\\frac{9}{4}}"), Num::R(3, 2));
        assert_eq!(exact("\\sqrt[3]{27}"), Num::R(3, 1));
        assert_eq!(exact("\\sqrt[3]{-8}"), Num::R(-2, 1));
        assert_eq!(exact("8^{1/3}"), Num::R(2, 1));
        assert!((val("\\sqrt{2}") - std::f64::consts::SQRT_2).abs() < 1e-12);
        assert!((val("2\\sqrt{3}") - 2.0 * 3f64.sqrt()).abs() < 1e-12);
        assert!((val("3\\pi") - 3.0 * PI).abs() < 1e-12);
        assert!((val("\\frac{\\pi}{2}") - PI / 2.0).abs() < 1e-12);
        assert!((val("\\sin\\frac{\\pi}{2}") - 1.0).abs() < 1e-12);
        assert!((val("\\log_2 8") - 3.0).abs() < 1e-12);
        assert!(parse_expr("\\sqrt{-4}").unwrap().eval(&|_| None).is_none());
    }

    #[test]
    fn mixed_numbers() {
        assert_eq!(exact("1\\frac{4}{5}"), Num::R(9, 5));
        assert_eq!(exact("137\\frac{1}{2}"), Num::R(275, 2));
        assert_eq!(exact("-2\\frac12"), Num::R(-5, 2));
        // not a mixed number: a product
        assert_eq!(exact("2\\frac{\\sqrt{4}}{2}"), Num::R(2, 1));
    }

    #[test]
    fn variables() {
        let e = parse_expr("x^2+2x+1").unwrap();
        assert_eq!(e.vars(), vec!["x".to_string()]);
        let v = e.eval(&|n| (n == "x").then_some(2.0)).unwrap().to_f64();
        assert_eq!(v, 9.0);
        assert_eq!(
            parse_expr("a_1+a_{12}").unwrap().vars(),
            vec!["a_1".to_string(), "a_12".to_string()]
        );
        assert_eq!(
            parse_expr("2\\pir^2").unwrap().vars(),
            vec!["r".to_string()]
        );
        assert!(parse_expr("Evelyn").is_none());
    }

    #[test]
    fn rejects_garbage_and_deep_input() {
        for s in [
            "",
            "(",
            ")",
            "1+",
            "\\frac{1}",
            "{{{",
            "1,2",
            "\\foo",
            "2^",
            "|",
            "1=2",
        ] {
            assert!(parse_expr(s).is_none(), "{s}");
        }
        let deep = "(".repeat(10_000) + "1" + &")".repeat(10_000);
        assert!(parse_expr(&deep).is_none());
        let nest = |n: usize| "(".repeat(n) + "1" + &")".repeat(n);
        assert!(parse_expr(&nest(60)).is_some());
        assert!(parse_expr(&nest(70)).is_none());
        let fracs = |n: usize| "\\frac{".repeat(n) + "1" + &"}{2}".repeat(n);
        assert!(parse_expr(&fracs(40)).is_some());
        assert!(parse_expr(&fracs(200)).is_none());
        let sins = "\\sin^\\sin^".repeat(200) + "x";
        assert!(parse_expr(&sins).is_none());
        let roots = "\\sqrt".repeat(500) + "2";
        assert!(parse_expr(&roots).is_none());
        let neg = "-".repeat(10_000) + "1";
        assert!(parse_expr(&neg).is_none());
        let tower = "2^".repeat(40) + "2";
        // parses (depth 40) but the value overflows: no result, no hang
        assert!(parse_expr(&tower).unwrap().eval(&|_| None).is_none());
    }

    /// The deepest accepted inputs fit comfortably in a small thread stack.
    #[test]
    fn max_depth_fits_small_stack() {
        let h = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let mut ok = 0;
                for unit in [
                    "(",
                    "{",
                    "\\frac{",
                    "\\sqrt{",
                    "-(",
                    "2^{",
                    "|",
                    "\\sin(",
                    "\\frac{1}{",
                ] {
                    for n in [20, 40, 63, 64, 65, 100, 1000] {
                        let close = if unit == "|" {
                            "|"
                        } else if unit.ends_with('(') {
                            ")"
                        } else {
                            "}"
                        };
                        let extra = if unit == "\\frac{" { "}{2" } else { "" };
                        let s = unit.repeat(n) + "1" + &format!("{extra}{close}").repeat(n);
                        if let Some(e) = parse_expr(&s) {
                            let _ = e.eval(&|_| Some(1.0));
                            ok += 1;
                        }
                    }
                }
                ok
            })
            .unwrap();
        assert!(h.join().unwrap() > 0);
    }

    #[test]
    fn overflow_falls_back_to_float() {
        let big = "99999999999999999999*99999999999999999999*99999999999999999999";
        let v = exact(big);
        assert!(matches!(v, Num::F(_)));
        assert!((v.to_f64() / 1e60 - 1.0).abs() < 1e-9);
        assert_eq!(exact("2^{100}"), Num::R(1 << 100, 1));
        assert!(matches!(exact("2^{200}"), Num::F(_)));
        assert!(parse_expr("10^{10^{10}}")
            .unwrap()
            .eval(&|_| None)
            .is_none());
        assert!(parse_expr("1000!").unwrap().eval(&|_| None).is_none());
    }
}
