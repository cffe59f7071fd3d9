//! `strip_string`: the Qwen2.5-Math toolkit's answer normalisation, re-implemented in Rust.
//!
//! Every step is a single linear pass (no regex, no backtracking), so any input length is safe.
//! The steps run in the toolkit's order; where this version deliberately differs, the step says
//! so (`DIFF:`) and `mod.rs` lists the differences.

/// Normalise a final answer the way the toolkit's `strip_string` does (see module docs).
///
/// Each step runs only if its trigger text is present, so a short answer costs a few
/// substring checks rather than ~40 allocations.
pub fn strip_string(input: &str) -> String {
    strip_string_opts(input, false)
}

/// [`strip_string`] without the steps that drop a variable on the left of `=` (`y = 2x + 3`
/// keeps its `y`), so that equations and named assignments can be parsed as such.
pub(crate) fn strip_keep_equation(input: &str) -> String {
    strip_string_opts(input, true)
}

fn strip_string_opts(input: &str, keep_lhs: bool) -> String {
    // DIFF: several boxes separated by connectors (`\boxed{1}, \boxed{2}`, what
    // `extract_answer` returns for a multi-part answer): each part alone, joined by commas
    if let Some(parts) = super::extract::split_boxes(input) {
        let mut out = String::new();
        for (k, p) in parts.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let n = strip_string_opts(p, keep_lhs);
            // `1,234` inside one part must not become two parts
            if n.contains(',')
                && n.bytes()
                    .all(|b| b.is_ascii_digit() || b == b',' || b == b'.')
            {
                out.extend(n.chars().filter(|&c| c != ','));
            } else {
                out.push_str(&n);
            }
        }
        return out;
    }
    // DIFF: an answer that is one whole `\boxed{...}` is unboxed
    let input = unbox(input.trim());
    // DIFF: Unicode math (`√30`, `×`, `·`, `−`, `π`, `∞`, `≤`, `≥`, ...) as LaTeX
    let unicode;
    let input = if input.is_ascii() {
        input
    } else {
        unicode = unicode_math(input);
        unicode.as_str()
    };
    // whitespace, line breaks, trailing full stops
    let mut s: String = input
        .trim()
        .chars()
        .filter(|&c| c != '\n' && c != '\r')
        .collect();
    while s.ends_with('.') {
        s.pop();
    }
    // DIFF: `~` (TeX's non-breaking space) is a space
    if s.contains('~') {
        s = s.replace('~', " ");
    }
    if s.contains('\\') {
        // `\!` (toolkit); DIFF: also `\,` `\;` `\:` `\ ` `\quad` `\qquad` `\displaystyle`
        s = drop_spacing(&s);
    }
    // matrices: array / bmatrix -> pmatrix
    if s.contains("{array}") {
        s = array_to_pmatrix(&s);
    }
    s = rep(s, "bmatrix", "pmatrix");
    s = rep(s, "tfrac", "frac");
    s = rep(s, "dfrac", "frac");
    if s.contains('\\') {
        s = rep(s, "\\neq", "\\ne");
        s = rep(s, "\\leq", "\\le");
        s = rep(s, "\\geq", "\\ge");
        // DIFF: only the whole commands `\left` / `\right` (the toolkit also eats the prefix of
        // `\leftarrow`), plus the `\big`-family sizes
        s = drop_sizing(&s);
        s = rep(s, "\\{", "{");
        s = rep(s, "\\}", "}");
    }
    // DIFF: math delimiters around the whole answer go first, so that a unit before the closing
    // `$` is still trailing (`$150 \mbox{ cm}^2$` -> `150`, not `150^2`)
    if s.ends_with(['$', ')', ']']) {
        s = strip_math_delimiters(s);
    }
    // trailing `\text{...}` unit: `5\text{ cm}` -> `5`; DIFF: also `\text{ cm}^2`, `\mbox{ in}^2`
    if s.ends_with(['}', '2', '3']) {
        s = drop_trailing_text_unit(&s);
    }
    // degrees
    s = rep(s, "^{\\circ}", "");
    s = rep(s, "^\\circ", "");
    s = rep(s, "°", "");
    // dollars, inline-math delimiters
    s = rep(s, "\\$", "");
    s = rep(s, "$", "");
    s = rep(s, "\\(", "");
    s = rep(s, "\\)", "");
    // `\text{...}` -> `...` (DIFF: brace-matched, and also \textbf, \textit, \textrm, \mathrm)
    if s.contains("\\text") || s.contains("\\mathrm") {
        s = unwrap_text(&s);
    }
    // DIFF: number words after unwrapping (`\text{five}` -> `5`), see `word_number`
    if let Some(w) = word_number(&s) {
        s = w;
    }
    // DIFF: unit words only when they trail a number (`5 apples`, `3.5 hours`), see below
    if s.contains(' ') {
        s = drop_trailing_unit_words(&s);
    }
    // `x=`, `y\in`, ... (DIFF: not after a letter, digit or backslash, so `2x=4` stays; not
    // when two different variables are named, `x=2,y=3`, which is a named tuple)
    if !keep_lhs && s.contains(['=', '\\']) {
        s = drop_var_prefixes(&s);
    }
    s = rep(s, "\\emptyset", "{}");
    s = rep(s, "(-\\infty,\\infty)", "\\mathbb{R}");
    // percentages (DIFF: kept, as `\%`, after a proper fraction: `\frac{3}{4}\%` is 3/400)
    if s.contains('%') {
        s = drop_percent(&s);
    }
    // ` .5` -> ` 0.5`, `{.5` -> `{0.5` (DIFF: only before a digit)
    if s.contains('.') {
        s = zero_before_point(&s);
    }
    // infinity (DIFF: only whole words)
    if s.contains("inf") || s.contains('∞') {
        s = infinity_words(&s);
    }
    // DIFF: the words `and` / `or` become commas (toolkit deletes `and`: `1 and 2` -> `12`)
    if s.contains("and") || s.contains("or") {
        s = and_words(&s);
    }
    s = rep(s, "\\mathbf", "");
    // `\mbox{...}` removed (non-greedy, like the toolkit)
    if s.contains("\\mbox{") {
        s = drop_mbox(&s);
    }
    // complex unit j -> i
    if s.contains('j') && !s.contains('i') {
        s = s.replace('j', "i");
    }
    // `5.00` -> `5`, `3.0x` -> `3x`
    if s.contains('.') {
        s = drop_zero_decimals(&s);
    }
    if s.is_empty() {
        return s;
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    // `k = 5` -> ` 5` (one `=`, left side at most 2 characters)
    if !keep_lhs && s.contains('=') {
        s = short_lhs(&s);
    }
    // `\sqrt2` -> `\sqrt{2}`
    if s.contains("\\sqrt") {
        s = fix_sqrt(&s);
    }
    if s.contains(' ') {
        s.retain(|c| c != ' ');
        // DIFF: repeat the space-sensitive rules on the space-free string
        if s.contains("\\sqrt") {
            s = fix_sqrt(&s);
        }
        s = rep(s, "(-\\infty,\\infty)", "\\mathbb{R}");
    }
    if s.contains("\\in") {
        s = drop_in_prefix(&s);
    }
    if s.contains("\\frac") {
        s = fix_fracs(&s);
    }
    if s.contains('/') {
        s = fix_a_slash_b(&s);
    }
    s
}

/// `str::replace`, without the allocation when there is nothing to replace.
fn rep(s: String, from: &str, to: &str) -> String {
    if s.contains(from) {
        s.replace(from, to)
    } else {
        s
    }
}

/// `\boxed{x}` / `$\boxed{x}$` / `\fbox{x}` as the whole answer -> `x`.
fn unbox(s: &str) -> &str {
    let t = s
        .strip_prefix('$')
        .and_then(|x| x.strip_suffix('$'))
        .unwrap_or(s)
        .trim();
    for cmd in ["\\boxed{", "\\fbox{"] {
        if let Some(body) = t.strip_prefix(cmd).and_then(|x| x.strip_suffix('}')) {
            // the opening brace must close at the very end
            let mut depth = 1i64;
            for c in body.bytes() {
                match c {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return s;
                        }
                    }
                    _ => {}
                }
            }
            if depth == 1 {
                return body;
            }
        }
    }
    s
}

/// Drop `\!` and (DIFF) the other spacing commands. `\\` (row break) is kept intact.
fn drop_spacing(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => i += 2,
            Some(b'!' | b',' | b';' | b':' | b' ') => {
                out.push_str(&s[last..i]);
                i += 2;
                last = i;
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_alphabetic() {
                    j += 1;
                }
                if matches!(
                    &s[i + 1..j],
                    "quad" | "qquad" | "displaystyle" | "textstyle"
                ) {
                    out.push_str(&s[last..i]);
                    last = j;
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[last..]);
    out
}

/// `\begin{array}{ccc}` -> `\begin{pmatrix}`, `\end{array}` -> `\end{pmatrix}`.
fn array_to_pmatrix(s: &str) -> String {
    const BEGIN: &str = "\\begin{array}{";
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find(BEGIN) {
        let after = &rest[p + BEGIN.len()..];
        match after.find('}') {
            Some(q) => {
                out.push_str(&rest[..p]);
                out.push_str("\\begin{pmatrix}");
                rest = &after[q + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out.replace("\\end{array}", "\\end{pmatrix}")
}

/// Remove `\left`, `\right` and `\big`-style sizing commands (whole command names only).
fn drop_sizing(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'\\') {
            i += 2;
            continue;
        }
        let mut j = i + 1;
        while j < b.len() && b[j].is_ascii_alphabetic() {
            j += 1;
        }
        if matches!(
            &s[i + 1..j],
            "left"
                | "right"
                | "big"
                | "Big"
                | "bigg"
                | "Bigg"
                | "bigl"
                | "bigr"
                | "Bigl"
                | "Bigr"
                | "biggl"
                | "biggr"
                | "Biggl"
                | "Biggr"
        ) {
            out.push_str(&s[last..i]);
            last = j;
        }
        i = j.max(i + 1);
    }
    out.push_str(&s[last..]);
    out
}

/// The toolkit's `re.sub(r"\\text{.*?}$", "", s).strip()`, applied when the result is not
/// empty: from the first `\text{` to the end, if the string ends with `}`.
/// DIFF: also a final `\text{unit}^2` / `\mbox{unit}^3` (area and volume units).
fn drop_trailing_text_unit(s: &str) -> String {
    if s.ends_with('}') {
        if let Some(p) = s.find("\\text{") {
            if s.len() > p + 6 {
                let cand = s[..p].trim();
                if !cand.is_empty() {
                    return cand.to_string();
                }
            }
        }
        // DIFF: also a final `\textnormal{ miles}`, `\textrm{ cm}`, `\mbox{ cm}` unit
        for cmd in ["\\textnormal{", "\\textrm{", "\\mbox{", "\\mathrm{"] {
            if let Some(q) = s.rfind(cmd) {
                let content = &s[q + cmd.len()..s.len() - 1];
                if is_unit_text(content) {
                    let cand = s[..q].trim();
                    if !cand.is_empty() {
                        return cand.to_string();
                    }
                }
            }
        }
    }
    for pw in ["^2", "^3", "^{2}", "^{3}"] {
        let Some(base) = s.strip_suffix(pw) else {
            continue;
        };
        let Some(inner) = base.strip_suffix('}') else {
            continue;
        };
        for cmd in [
            "\\text{",
            "\\mbox{",
            "\\textnormal{",
            "\\textrm{",
            "\\mathrm{",
        ] {
            if let Some(q) = inner.rfind(cmd) {
                let content = &inner[q + cmd.len()..];
                let cand = inner[..q].trim();
                if is_unit_text(content) && !cand.is_empty() {
                    return cand.to_string();
                }
            }
        }
    }
    s.to_string()
}

/// A unit in a text command: letters, spaces and full stops only (` cm`, `sq. ft`).
fn is_unit_text(content: &str) -> bool {
    !content.trim().is_empty()
        && content
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == ' ' || c == '.')
}

/// DIFF: `\frac{3}{4}\%` keeps its percent sign (as `\%`): a percent of a proper fraction is read
/// as that fraction of a percent, not as the bare fraction; any other `%` is dropped (`50\%`
/// ~ `50`, the toolkit's rule).
fn drop_percent(s: &str) -> String {
    let body = s
        .strip_suffix("\\%")
        .or_else(|| s.strip_suffix('%'))
        .unwrap_or(s);
    if body.len() < s.len() && !body.contains(['%', '.']) {
        if let Some(Some(super::latex::Num::R(n, d))) =
            super::latex::parse_expr(body).map(|e| e.eval(&|_| None))
        {
            if d != 1 && n.unsigned_abs() < d.unsigned_abs() {
                return format!("{body}\\%");
            }
        }
    }
    s.replace("\\%", "").replace('%', "")
}

/// Unicode math symbols as LaTeX commands; `√30` becomes `\sqrt30`, which the `\sqrt2` rule
/// then braces as a whole digit run.
fn unicode_math(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '√' => out.push_str("\\sqrt"),
            '×' => out.push_str("\\times "),
            '·' | '⋅' => out.push_str("\\cdot "),
            '−' | '–' | '—' => out.push('-'),
            'π' => out.push_str("\\pi "),
            '∞' => out.push_str("\\infty "),
            '≤' | '⩽' => out.push_str("\\le "),
            '≥' | '⩾' => out.push_str("\\ge "),
            '≠' => out.push_str("\\ne "),
            '±' => out.push_str("\\pm "),
            '∓' => out.push_str("\\mp "),
            '∪' => out.push_str("\\cup "),
            '∈' => out.push_str("\\in "),
            '÷' => out.push_str("\\div "),
            '∅' => out.push_str("\\emptyset "),
            'ℝ' => out.push_str("\\mathbb{R}"),
            '∖' => out.push_str("\\setminus "),
            '²' => out.push_str("^2"),
            '³' => out.push_str("^3"),
            '\u{a0}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

const TEXT_WRAPPERS: &[&str] = &[
    "text",
    "textbf",
    "textit",
    "textrm",
    "textnormal",
    "textsf",
    "mathrm",
];

/// `\text{abc}` -> `abc`, brace-matched, nested, in one linear pass.
fn unwrap_text(s: &str) -> String {
    if !s.contains("\\text") && !s.contains("\\mathrm") {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    // one entry per open `{`: true if it opened a text wrapper (its `}` is dropped)
    let mut stack: Vec<bool> = Vec::new();
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_alphabetic() {
                    j += 1;
                }
                if j < b.len() && b[j] == b'{' && TEXT_WRAPPERS.contains(&&s[i + 1..j]) {
                    out.push_str(&s[last..i]);
                    stack.push(true);
                    i = j + 1;
                    last = i;
                } else {
                    i = j.max(i + 2).min(b.len());
                    // keep an escaped brace `\{` from touching the stack
                }
            }
            b'{' => {
                stack.push(false);
                i += 1;
            }
            b'}' => {
                if stack.pop() == Some(true) {
                    out.push_str(&s[last..i]);
                    last = i + 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[last..]);
    out
}

/// `five` -> `5`, `twenty-one` -> `21`, `one hundred and five` -> `105`; number words may be
/// followed by other words (`five dollars` -> `5`). Only strings made of letters, spaces and
/// hyphens are touched; returns `None` if it does not apply.
fn word_number(s: &str) -> Option<String> {
    let t = s.trim();
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == ' ' || c == '-')
    {
        return None;
    }
    let lower = t.to_ascii_lowercase();
    let mut total: u64 = 0;
    let mut current: u64 = 0;
    let mut seen = false;
    let mut done = false;
    for w in lower.split([' ', '-']).filter(|w| !w.is_empty()) {
        let small = match w {
            "zero" => Some(0),
            "one" => Some(1),
            "two" => Some(2),
            "three" => Some(3),
            "four" => Some(4),
            "five" => Some(5),
            "six" => Some(6),
            "seven" => Some(7),
            "eight" => Some(8),
            "nine" => Some(9),
            "ten" => Some(10),
            "eleven" => Some(11),
            "twelve" => Some(12),
            "thirteen" => Some(13),
            "fourteen" => Some(14),
            "fifteen" => Some(15),
            "sixteen" => Some(16),
            "seventeen" => Some(17),
            "eighteen" => Some(18),
            "nineteen" => Some(19),
            "twenty" => Some(20),
            "thirty" => Some(30),
            "forty" => Some(40),
            "fifty" => Some(50),
            "sixty" => Some(60),
            "seventy" => Some(70),
            "eighty" => Some(80),
            "ninety" => Some(90),
            _ => None,
        };
        let scale = match w {
            "hundred" => Some(100),
            "thousand" => Some(1_000),
            "million" => Some(1_000_000),
            "billion" => Some(1_000_000_000),
            _ => None,
        };
        if done {
            if small.is_some() || scale.is_some() {
                return None; // number words after other words: not a plain number
            }
            continue;
        }
        if let Some(v) = small {
            current += v;
            seen = true;
        } else if let Some(k) = scale {
            if !seen {
                return None;
            }
            if k == 100 {
                current = current.max(1) * 100;
            } else {
                total += current.max(1).checked_mul(k)?;
                current = 0;
            }
        } else if w == "and" && seen {
            continue;
        } else if seen {
            done = true;
        } else {
            return None;
        }
        if total > 1_000_000_000_000 || current > 1_000_000_000_000 {
            return None;
        }
    }
    seen.then(|| (total + current).to_string())
}

/// Short units that may trail a number; longer words (3+ letters) always count as units there.
const SHORT_UNITS: &[&str] = &[
    "m", "cm", "mm", "km", "g", "kg", "mg", "s", "h", "l", "ml", "ft", "in", "lb", "oz", "mi",
    "hr", "yd", "am", "pm", "st", "nd", "rd", "th", "sq", "cc", "ms",
];
/// Words that are never stripped as units.
const NOT_UNITS: &[&str] = &["and", "or", "pi", "inf", "infinity"];

/// DIFF: the toolkit deletes ~190 unit words (including `a`, `h`, `t`, `s`, ...) anywhere in the
/// answer, which mangles algebra (`(a+5)(b+2)` -> `(+5)(b+2)`). Here, a trailing run of words
/// after a number (`5 apples`, `3.5 square feet`, `\frac12 cup`) is dropped instead.
fn drop_trailing_unit_words(s: &str) -> String {
    let t = s.trim_end();
    let b = t.as_bytes();
    let mut end = t.len();
    let mut cut = None;
    loop {
        let mut start = end;
        while start > 0 && b[start - 1].is_ascii_alphabetic() {
            start -= 1;
        }
        if start == end || start == 0 {
            break;
        }
        let word = t[start..end].to_ascii_lowercase();
        let unit = !NOT_UNITS.contains(&word.as_str())
            && (word.len() >= 3 || SHORT_UNITS.contains(&word.as_str()));
        if !unit {
            break;
        }
        let mut ws = start;
        while ws > 0 && b[ws - 1] == b' ' {
            ws -= 1;
        }
        if ws == start {
            break; // glued to what precedes (`5cm`, `\pi`, `2x`): not a separate word
        }
        cut = Some(ws);
        end = ws;
    }
    match cut {
        Some(c) if c > 0 && matches!(b[c - 1], b'0'..=b'9' | b'}' | b')') => t[..c].to_string(),
        _ => s.to_string(),
    }
}

/// Remove `x=`, `y=`, `z=`, `x\in`, `y\in`, `z\in`, `x\to`, `y\to`, `z\to`.
fn drop_var_prefixes(s: &str) -> String {
    if !s.contains(['x', 'y', 'z']) {
        return s.to_string();
    }
    let b = s.as_bytes();
    // DIFF: two different variables named (`x=2, y=3`): a named tuple, kept
    let named = |c: u8| {
        (0..b.len()).any(|i| {
            b[i] == c
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'\\'))
                && b.get(i + 1) == Some(&b'=')
        })
    };
    if [b'x', b'y', b'z'].iter().filter(|&&c| named(c)).count() > 1 {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'x' | b'y' | b'z') {
            let prev_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'\\');
            let rest = &s[i + 1..];
            let len = if rest.starts_with('=') {
                1
            } else if (rest.starts_with("\\in") || rest.starts_with("\\to"))
                && !rest[3..].starts_with(|c: char| c.is_ascii_alphabetic())
            {
                3
            } else {
                0
            };
            if prev_ok && len > 0 {
                out.push_str(&s[last..i]);
                i += 1 + len;
                last = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[last..]);
    out
}

/// ` .5` -> ` 0.5`, `{.5` -> `{0.5`.
fn zero_before_point(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 4);
    let mut last = 0;
    for i in 1..b.len() {
        if b[i] == b'.'
            && matches!(b[i - 1], b' ' | b'{')
            && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())
        {
            out.push_str(&s[last..i]);
            out.push('0');
            last = i;
        }
    }
    out.push_str(&s[last..]);
    out
}

/// Byte ranges of the whole-word occurrences of `word` (not inside a longer letter run and not
/// a backslash command).
fn word_positions(s: &str, word: &str) -> Vec<usize> {
    let b = s.as_bytes();
    s.match_indices(word)
        .map(|(p, _)| p)
        .filter(|&p| {
            let before = p == 0 || !(b[p - 1].is_ascii_alphabetic() || b[p - 1] == b'\\');
            let after = b
                .get(p + word.len())
                .is_none_or(|c| !c.is_ascii_alphabetic());
            before && after
        })
        .collect()
}

fn replace_words(s: &str, word: &str, with: &str) -> String {
    let pos = word_positions(s, word);
    if pos.is_empty() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + pos.len() * with.len());
    let mut last = 0;
    for p in pos {
        out.push_str(&s[last..p]);
        out.push_str(with);
        last = p + word.len();
    }
    out.push_str(&s[last..]);
    out
}

fn infinity_words(s: &str) -> String {
    let s = replace_words(s, "infinity", "\\infty").replace('∞', "\\infty");
    if s.contains("\\infty") {
        s
    } else {
        replace_words(&s, "inf", "\\infty")
    }
}

/// `1 and 2` -> `1 , 2`; `1, 2, and 3` -> `1, 2,  3`; `x=1 or x=2` -> `x=1 , x=2`.
fn and_words(s: &str) -> String {
    let mut pos: Vec<(usize, usize)> = word_positions(s, "and")
        .into_iter()
        .map(|p| (p, 3))
        .collect();
    pos.extend(word_positions(s, "or").into_iter().map(|p| (p, 2)));
    if pos.is_empty() {
        return s.to_string();
    }
    pos.sort_unstable();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (p, len) in pos {
        out.push_str(&s[last..p]);
        let after_comma = out.trim_end().ends_with(',');
        if !after_comma {
            out.push(',');
        }
        last = p + len;
    }
    out.push_str(&s[last..]);
    out
}

/// `$x$`, `\(x\)`, `\[x\]` around the whole answer -> `x`.
fn strip_math_delimiters(s: String) -> String {
    let t = s.trim();
    for (open, close) in [("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(inner) = t.strip_prefix(open).and_then(|x| x.strip_suffix(close)) {
            let inner = inner.trim_matches('$').trim();
            if !inner.is_empty() {
                return inner.to_string();
            }
        }
    }
    s
}

/// `\mbox{...}` removed up to the first `}`, like the toolkit's non-greedy regex; DIFF: with
/// the power of an area or volume unit after it (`\mbox{ cm}^2`), which would be debris.
fn drop_mbox(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("\\mbox{") {
        match rest[p + 6..].find('}') {
            Some(q) => {
                out.push_str(&rest[..p]);
                let unit = is_unit_text(&rest[p + 6..p + 6 + q]);
                rest = &rest[p + 6 + q + 1..];
                if unit {
                    for pw in ["^{2}", "^{3}", "^2", "^3"] {
                        if let Some(r) = rest.strip_prefix(pw) {
                            rest = r;
                            break;
                        }
                    }
                }
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// `(\d+)\.0*([^\d])` -> `\1\2` and `(\d+)\.0*$` -> `\1`.
fn drop_zero_decimals(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'.' && i > 0 && b[i - 1].is_ascii_digit() {
            let mut j = i + 1;
            while j < b.len() && b[j] == b'0' {
                j += 1;
            }
            // DIFF: not before a repeating part (`0.\overline{6}`)
            let repeating = j == i + 1
                && ["\\overline{", "\\bar{", "\\dot{"]
                    .iter()
                    .any(|c| s[j..].starts_with(c));
            if (j == b.len() || !b[j].is_ascii_digit()) && !repeating {
                out.push_str(&s[last..i]);
                last = j;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[last..]);
    out
}

/// `k = 5` -> ` 5`: exactly one `=` and at most 2 characters before it.
fn short_lhs(s: &str) -> String {
    let mut parts = s.split('=');
    if let (Some(lhs), Some(rhs), None) = (parts.next(), parts.next(), parts.next()) {
        if lhs.chars().count() <= 2 {
            return rhs.to_string();
        }
    }
    s.to_string()
}

/// `\sqrt2` -> `\sqrt{2}`, `\sqrt{x}` unchanged. Wraps a run of digits, as the toolkit does;
/// DIFF: a letter run is wrapped one letter at a time (`\sqrt3x` -> `\sqrt{3}x`, TeX's reading).
fn fix_sqrt(s: &str) -> String {
    const SQRT: &str = "\\sqrt";
    if !s.contains(SQRT) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(p) = rest.find(SQRT) {
        out.push_str(&rest[..p + SQRT.len()]);
        rest = &rest[p + SQRT.len()..];
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        let take = if digits > 0 {
            digits
        } else if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            // `\sqrtx` (a letter glued on); a longer letter run is another command, e.g. none.
            1
        } else {
            0
        };
        if take > 0 {
            out.push('{');
            out.push_str(&rest[..take]);
            out.push('}');
            rest = &rest[take..];
        }
    }
    out.push_str(rest);
    out
}

/// DIFF: `x\in[1,2]` -> `[1,2]` for any single-letter variable (the toolkit only strips
/// `x\in`, `y\in`, `z\in` written without spaces).
fn drop_in_prefix(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() > 4
        && b[0].is_ascii_alphabetic()
        && s[1..].starts_with("\\in")
        && !b[4].is_ascii_alphabetic()
    {
        return s[4..].to_string();
    }
    s.to_string()
}

/// `\frac12` -> `\frac{1}{2}`, `\frac1{72}` -> `\frac{1}{72}`, `\frac{a}{b}` unchanged.
fn fix_fracs(s: &str) -> String {
    const FRAC: &str = "\\frac";
    if !s.contains(FRAC) {
        return s.to_string();
    }
    let mut pieces = s.split(FRAC);
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(pieces.next().unwrap_or(""));
    for piece in pieces {
        out.push_str(FRAC);
        let mut chars = piece.chars();
        match (chars.next(), chars.next()) {
            (Some('{'), _) => out.push_str(piece),
            // DIFF: a command argument (`\frac\pi2`) is left for the LaTeX parser
            (Some('\\'), _) | (Some(_), Some('\\')) => out.push_str(piece),
            (Some(a), Some(b)) => {
                let rest = chars.as_str();
                out.push('{');
                out.push(a);
                out.push('}');
                if b == '{' {
                    out.push(b);
                } else {
                    out.push('{');
                    out.push(b);
                    out.push('}');
                }
                out.push_str(rest);
            }
            // fewer than two characters after `\frac`: the toolkit returns the input unchanged
            _ => return s.to_string(),
        }
    }
    out
}

fn is_canonical_int(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && s != "-0"
}

/// `3/4` -> `\frac{3}{4}` when both sides are plain integers (or contain `sqrt`).
fn fix_a_slash_b(s: &str) -> String {
    let mut parts = s.split('/');
    if let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) {
        let ok = |x: &str| x.contains("sqrt") || is_canonical_int(x);
        if ok(a) && ok(b) {
            return format!("\\frac{{{a}}}{{{b}}}");
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test per rule; expected values are written by hand.

    #[test]
    fn trims_whitespace_newlines_and_trailing_period() {
        assert_eq!(strip_string("  42.  "), "42");
        assert_eq!(strip_string("4\n2"), "42");
        assert_eq!(strip_string("7..."), "7");
    }

    #[test]
    fn drops_left_right() {
        assert_eq!(strip_string("\\left( 3, 4 \\right)"), "(3,4)");
        assert_eq!(strip_string("\\left[0,1\\right)"), "[0,1)");
        // not a prefix of other commands
        assert_eq!(strip_string("\\leftarrow"), "\\leftarrow");
    }

    #[test]
    fn drops_thin_spaces() {
        assert_eq!(strip_string("10,\\!080"), "10,080");
        assert_eq!(strip_string("1\\,000"), "1000");
        assert_eq!(strip_string("2\\;\\pi"), "2\\pi");
        assert_eq!(strip_string("5\\ \\text{cm}"), "5");
        assert_eq!(strip_string("x\\quad"), "x");
    }

    #[test]
    fn keeps_row_breaks() {
        assert_eq!(
            strip_string("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
            "\\begin{pmatrix}1\\\\2\\end{pmatrix}"
        );
    }

    #[test]
    fn drops_dollars() {
        assert_eq!(strip_string("$5$"), "5");
        assert_eq!(strip_string("\\$18.90"), "18.90");
        assert_eq!(strip_string("\\$32,\\!348"), "32,348");
    }

    #[test]
    fn drops_inline_math_delimiters() {
        assert_eq!(strip_string("\\(x+1\\)"), "x+1");
    }

    #[test]
    fn drops_trailing_text_unit() {
        assert_eq!(strip_string("5\\text{ cm}"), "5");
        assert_eq!(strip_string("5.4 \\text{ cents}"), "5.4");
        assert_eq!(strip_string("\\frac{270}7\\text{ degrees}"), "\\frac{270}7");
        // the whole answer is text: kept (unwrapped)
        assert_eq!(strip_string("\\text{Evelyn}"), "Evelyn");
        assert_eq!(strip_string("\\text{(C)}"), "(C)");
    }

    #[test]
    fn drops_area_units() {
        assert_eq!(strip_string("$150 \\mbox{ cm}^2$"), "150");
        assert_eq!(strip_string("\\(150 \\text{ cm}^2\\)"), "150");
        assert_eq!(strip_string("150 \\mbox{ cm}^2 + 1"), "150+1");
        assert_eq!(strip_string("864 \\mbox{ inches}^2"), "864");
        assert_eq!(strip_string("15\\mbox{ cm}^2"), "15");
        assert_eq!(strip_string("12\\text{ m}^3"), "12");
    }

    #[test]
    fn unwraps_text() {
        assert_eq!(strip_string("\\text{east}"), "east");
        assert_eq!(strip_string("\\textbf{(B)}"), "(B)");
        assert_eq!(strip_string("\\text{a}+\\text{b{c}}"), "a+b{c}");
    }

    #[test]
    fn drops_unit_words_after_numbers() {
        assert_eq!(strip_string("18 dollars"), "18");
        assert_eq!(strip_string("3.5 hours"), "3.5");
        assert_eq!(strip_string("4 square feet"), "4");
        assert_eq!(strip_string("100 m"), "100");
        assert_eq!(strip_string("\\text{5 apples}"), "5");
        // not after a number, or glued on: kept
        assert_eq!(strip_string("(a+5)(b+2)"), "(a+5)(b+2)");
        assert_eq!(strip_string("5 x"), "5x");
        assert_eq!(strip_string("2\\pi r"), "2\\pir");
    }

    #[test]
    fn drops_degrees() {
        assert_eq!(strip_string("90^\\circ"), "90");
        assert_eq!(strip_string("30^{\\circ}"), "30");
        assert_eq!(strip_string("45°"), "45");
    }

    #[test]
    fn drops_percent() {
        assert_eq!(strip_string("50\\%"), "50");
        assert_eq!(strip_string("12.5%"), "12.5");
    }

    #[test]
    fn dfrac_tfrac_to_frac() {
        assert_eq!(strip_string("\\dfrac{17}{50}"), "\\frac{17}{50}");
        assert_eq!(strip_string("\\tfrac{1}{3}"), "\\frac{1}{3}");
    }

    #[test]
    fn braces_short_fracs() {
        assert_eq!(strip_string("\\frac12"), "\\frac{1}{2}");
        assert_eq!(strip_string("\\frac 59"), "\\frac{5}{9}");
        assert_eq!(strip_string("\\frac9{19}"), "\\frac{9}{19}");
        assert_eq!(strip_string("\\frac{72}1"), "\\frac{72}1");
        assert_eq!(strip_string("\\frac1"), "\\frac1");
    }

    #[test]
    fn braces_short_sqrt() {
        assert_eq!(strip_string("\\sqrt2"), "\\sqrt{2}");
        assert_eq!(strip_string("11\\sqrt2"), "11\\sqrt{2}");
        assert_eq!(strip_string("\\sqrt 13"), "\\sqrt{13}");
        assert_eq!(strip_string("\\sqrt{5}"), "\\sqrt{5}");
        assert_eq!(strip_string("\\sqrt[3]{2}"), "\\sqrt[3]{2}");
    }

    #[test]
    fn drops_short_lhs() {
        assert_eq!(strip_string("x=5"), "5");
        assert_eq!(strip_string("k = 7"), "7");
        assert_eq!(strip_string("y = 2x + 3"), "2x+3");
        assert_eq!(strip_string("x \\in [-2,7]"), "[-2,7]");
        // long left side: an equation, kept
        assert_eq!(strip_string("5x - 7y + 11z + 4 = 0"), "5x-7y+11z+4=0");
        // a coefficient before the variable: not a prefix
        assert_eq!(strip_string("12x=4y"), "12x=4y");
    }

    #[test]
    fn drops_trailing_zero_decimals() {
        assert_eq!(strip_string("5.00"), "5");
        assert_eq!(strip_string("3.0"), "3");
        assert_eq!(strip_string("2.50"), "2.50");
        assert_eq!(strip_string("1.05"), "1.05");
        assert_eq!(strip_string("(1.0,2.000)"), "(1,2)");
    }

    #[test]
    fn adds_leading_zero() {
        assert_eq!(strip_string(".5"), "0.5");
        assert_eq!(strip_string(".0000672"), "0.0000672");
        assert_eq!(strip_string("x = .5"), "0.5");
        assert_eq!(strip_string("\\frac{.5}{2}"), "\\frac{0.5}{2}");
    }

    #[test]
    fn removes_spaces() {
        assert_eq!(strip_string("2 \\pi"), "2\\pi");
        assert_eq!(strip_string("6 - 5i"), "6-5i");
    }

    #[test]
    fn drops_mbox() {
        assert_eq!(strip_string("7\\mbox{ units}"), "7");
    }

    #[test]
    fn slash_fractions() {
        assert_eq!(strip_string("3/4"), "\\frac{3}{4}");
        assert_eq!(strip_string("-3/4"), "\\frac{-3}{4}");
        assert_eq!(strip_string("\\sqrt{2}/2"), "\\frac{\\sqrt{2}}{2}");
        assert_eq!(strip_string("x/4"), "x/4");
        assert_eq!(strip_string("1/2/3"), "1/2/3");
    }

    #[test]
    fn sets_and_matrices() {
        assert_eq!(strip_string("\\{1, 2\\}"), "{1,2}");
        assert_eq!(strip_string("\\emptyset"), "{}");
        assert_eq!(
            strip_string("\\begin{bmatrix}1&2\\end{bmatrix}"),
            "\\begin{pmatrix}1&2\\end{pmatrix}"
        );
        assert_eq!(
            strip_string("\\begin{array}{cc}1&2\\end{array}"),
            "\\begin{pmatrix}1&2\\end{pmatrix}"
        );
    }

    #[test]
    fn infinity() {
        assert_eq!(strip_string("(-\\infty, \\infty)"), "\\mathbb{R}");
        assert_eq!(strip_string("(2, infinity)"), "(2,\\infty)");
        assert_eq!(strip_string("(2, inf)"), "(2,\\infty)");
        assert_eq!(strip_string("[2, \\infty)"), "[2,\\infty)");
    }

    #[test]
    fn and_becomes_comma() {
        assert_eq!(strip_string("1 and 2"), "1,2");
        assert_eq!(strip_string("1, 2, and 3"), "1,2,3");
        assert_eq!(strip_string("\\text{Monday and Tuesday}"), "Monday,Tuesday");
        assert_eq!(strip_string("candy"), "candy");
    }

    #[test]
    fn word_numbers() {
        assert_eq!(strip_string("five"), "5");
        assert_eq!(strip_string("Twenty-one"), "21");
        assert_eq!(strip_string("one hundred and five"), "105");
        assert_eq!(strip_string("\\text{three} dollars"), "3");
        assert_eq!(strip_string("two thousand"), "2000");
        assert_eq!(strip_string("none"), "none");
    }

    #[test]
    fn complex_j() {
        assert_eq!(strip_string("3+4j"), "3+4i");
        assert_eq!(strip_string("\\sin j"), "\\sinj");
    }

    #[test]
    fn relations_and_bold() {
        assert_eq!(strip_string("x \\leq 3"), "x\\le3");
        assert_eq!(strip_string("x \\neq 3"), "x\\ne3");
        assert_eq!(strip_string("\\mathbf{v}"), "{v}");
    }

    #[test]
    fn unboxes_whole_answer() {
        assert_eq!(strip_string("\\boxed{5}"), "5");
        assert_eq!(strip_string("$\\boxed{\\frac{1}{2}}$"), "\\frac{1}{2}");
        assert_eq!(
            strip_string("\\boxed{1}+\\boxed{2}"),
            "\\boxed{1}+\\boxed{2}"
        );
    }

    #[test]
    fn or_becomes_comma() {
        assert_eq!(strip_string("x=1 \\text{ or } x=2"), "1,2");
        assert_eq!(strip_string("color"), "color");
    }

    #[test]
    fn empty_and_odd_inputs() {
        assert_eq!(strip_string(""), "");
        assert_eq!(strip_string("..."), "");
        assert_eq!(strip_string("\\"), "\\");
        assert_eq!(strip_string("\\text{é}ü"), "éü");
    }
}
