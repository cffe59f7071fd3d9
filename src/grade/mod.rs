//! Answer extraction, normalisation and equivalence for math reasoning.
//!
//! ```text
//! completion ──extract_answer──▶ raw answer ──Answer::parse──▶ Answer { raw, normalized, form }
//!                                                       Answer::equivalent(&other, &opts) ─▶ bool
//! ```
//!
//! * [`extract_answer`]: last `\boxed{}` / `\fbox{}` (with the boxes joined to it by connectors:
//!   one multi-part answer), else "the answer is …", else the text after an `Answer:` header (the
//!   answer inside it if it is a sentence), else the last math span `$…$` / `\(…\)` / `\[…\]`
//!   that no digit follows, else the last number.
//! * [`strip_string`]: the toolkit's normalisation (`\left`, `$`, `\text{}` units, `^\circ`, `%`,
//!   `dfrac`, `\frac12`, `\sqrt2`, `x=` prefixes, `5.00`, `.5`, spaces, ...).
//! * [`Answer::parse`] normalises once and parses the result into a number, tuple/interval, set,
//!   list, matrix, union, equation, expression with variables, base-`b` number or plain text;
//!   [`Answer::equivalent`] then compares parsed forms without re-parsing (clustering compares
//!   every pair of distinct answers).
//!
//! # Equivalence rules (in order)
//! 1. equal normalised strings; plain words case-insensitively (`Evelyn` ~ `evelyn`);
//!    choice letters `(A)` ~ `A`;
//! 2. numbers: exact rationals (integers, fractions, decimals as written, repeating decimals
//!    `0.\overline{6}`, scientific `3.5e-4`) exactly; floats (irrational arithmetic) to the
//!    relative `rel_tol` (1e-9), and within 1e-14 of an exact 0; a number written with a decimal
//!    point also within `approximate` when that is set (off by default: `0.6667` ≢ `2/3`);
//!    LaTeX arithmetic (`\frac`, `\sqrt`, `\sqrt[3]{}`, `^`, `\pi`, `\cdot`, `\times`, `\div`,
//!    implicit products `2\sqrt{3}`, `!`, `\binom`, trig/log) is evaluated exactly on `i128`
//!    rationals where possible, else in `f64`; mixed numbers `1\frac{4}{5}` = 9/5; `\frac34\%`
//!    is 3/400 (a whole-number or decimal percentage drops its sign); an expression whose only
//!    variable is `i` is a complex constant (`\frac{10}{3+i}` = `3-i`);
//! 3. expressions with variables: evaluated at `symbolic_points` deterministic pseudo-random
//!    points (each variable in [0.5, 3.5)), relative tolerance 1e-9;
//! 4. equations `lhs = rhs` (with variables): `lhs - rhs` proportional; `v = e` with a lone
//!    variable `v` also matches `e` itself (`4 = x` ~ `4`, `y = 2x+3` ~ `2x+3`) and any `v = e'`
//!    with `e'` ~ `e`; named assignments `a = 3, b = -4` / `(a,b) = (3,-4)` match the tuple;
//! 5. tuples/points and intervals element-wise, brackets must match (`[0,1)` ≢ `[0,1]`);
//!    sets `\{…\}`, bare lists `1, 2` and `a \pm b` as sets; `\cup` unions as sets of parts;
//!    matrices element-wise with equal shapes (a vector also matches a tuple);
//!    `\infty` / `-\infty`; `52_8` ≡ `52_{8}` (and ≡ `52`, the subscript left off);
//!    a scalar times a matrix (`2\begin{pmatrix}…`, `-\begin{pmatrix}…`) entry-wise;
//! 6. sets of reals: when either side is a union, a `\setminus`, `\mathbb{R}` or an inequality
//!    (`-2 \le x \le 7`, `x > 3`, `x < -2 or x > 3`), both sides are reduced to sorted, merged
//!    intervals and compared as sets (`(0,10) \setminus \{5\}` ~ `(0,5) \cup (5,10)`).
//!
//! The relation is symmetric. The optional percent rule (`0.5` ~ `50`) is too: `a = 100·b`
//! exactly when `b = a/100`, so it does not matter which side is the reference.
//!
//! # Differences from the Qwen2.5-Math toolkit (`parser.py` `strip_string`, `grader.py`)
//! Kept: box, then "the answer is", then the last number as the first and last extraction
//! steps; `\boxed` brace matching; `strip_string`'s steps in its order (including `\frac12`,
//! `\sqrt2`, `k =` prefixes of ≤ 2 characters, `a/b` → `\frac{a}{b}`, trailing `.0`, `j` → `i`,
//! `\text{…}` at the end removed, `%`, `^\circ`, `$`); its numeric relative tolerance 1e-4 as
//! the `approximate` option; element-wise tuples and matrices.
//!
//! Changed, deliberately:
//! * percent rule (`pred == ref·100` or `ref/100`) is **off** by default ([`GradeOptions`]);
//! * numbers compare exactly as rationals instead of to 1e-4 (the toolkit equates 123456 and
//!   123457, `0.6667` and `2/3`); `approximate: Some(1e-4)` restores its rule for decimals, and
//!   with `approximate_all` for every number. The [`Grading`] preset `qwen` turns on both
//!   numeric rules as the toolkit's `math_equal(pred, gt)` has them (checked against it in
//!   [`grading`]'s tests); its percent rule then covers every number (the toolkit's, plain
//!   numbers only: `\frac{1}{2}` ≢ `50` there), and `\pi` is π (the toolkit's sympy reads it
//!   as a symbol, so no number equals `4\pi` there);
//! * several boxes joined by connectors are one (set) answer, not the last box alone; the
//!   `Answer:` header and the last math span are tried before the last number;
//! * `\frac34\%` keeps its percent sign (3/400); Unicode math is read as LaTeX;
//! * unit words are removed only when they trail a number (`5 apples`, `3.5 square feet`); the
//!   toolkit deletes ~190 words anywhere, including single letters `a`, `h`, `t`, `s`, `m`,
//!   which mangles algebra (`(a+5)(b+2)` → `(+5)(b+2)`); `\text{u}^2` area units are removed;
//! * the words `and` / `or` become commas (toolkit deletes `and`, so `1 and 2` → `12`);
//! * an answer that is a single whole `\boxed{…}` is unboxed;
//! * `x=` / `x\in` prefixes are removed only when not glued to a coefficient (`2x=4` stays an
//!   equation); `x \in [a,b]` with spaces and any letter is handled;
//! * `\text{}` is unwrapped brace-matched (also `\textbf`, `\textit`, `\textrm`, `\mathrm`);
//!   `\,` `\;` `\:` `\ ` `\quad` are dropped; only whole `\left`/`\right` commands are removed;
//! * `\sqrt3x` → `\sqrt{3}x` (TeX's reading; the toolkit wraps the whole word run);
//! * number words (`five`, `twenty-one`) are converted after `\text{}` is unwrapped;
//! * sets, bare lists and `±` are order-insensitive; intervals require matching brackets
//!   (the toolkit strips brackets and would equate `(1,2)` and `{1,2}`);
//! * expressions are compared numerically at sample points instead of with sympy; there is no
//!   simplification of expressions that fail to evaluate (they compare as strings);
//! * an unclosed or empty `\boxed{` is skipped (earlier box, then the fallbacks), instead of
//!   returning the rest of the text / an empty answer; "the answer is" takes one line/sentence;
//! * choice letters are upper-case `A`–`E` only (`(a)` is the variable `a`).
//!
//! # Untrusted input
//! No input panics. Extraction is a bounded backward scan (linear in the completion). Answers
//! whose normalised form is longer than 1000 bytes are compared as strings only; the LaTeX parser
//! bounds recursion depth (64) and structure nesting (16); exact arithmetic is overflow-checked
//! `i128` with an `f64` fallback, powers are exact only for exponents ≤ 512, and non-finite
//! floats make an evaluation fail. No regular expressions are used.

mod equiv;
mod extract;
pub mod grading;
mod latex;
mod normalize;

pub use equiv::{is_equivalent, Answer, GradeOptions};
pub use grading::{Grading, NumericRules, Preset};

/// Changes whenever a grading rule does, so that `east run` grades a finished round's
/// completions and evaluations again instead of keeping verdicts of an older grader.
pub const VERSION: u32 = 2;
pub use extract::{extract_answer, gsm8k_reference, math_reference};
pub use normalize::strip_string;
