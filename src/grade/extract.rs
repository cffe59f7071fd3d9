//! Final-answer extraction from model completions and reference solutions.
//!
//! All scans work from the end of the text and touch each byte a bounded number of times, so
//! a completion of any length is handled in linear time. Only ASCII bytes are used as cut
//! points, so slices always fall on UTF-8 character boundaries.

const BOX_CMDS: [&str; 2] = ["\\boxed", "\\fbox"];

/// Final answer of a model completion, in the Qwen2.5-Math toolkit's order:
/// 1. the last `\boxed{…}` / `\fbox{…}` (brace-matched, nested braces allowed; `\boxed 5` without
///    braces takes the text up to the next `$` or line end). A box that never closes, or is
///    empty, is skipped and the previous box is tried;
/// 2. else the text after the last "he answer is" / "final answer is" (leading `:` and
///    surrounding whitespace / `*` dropped), up to the end of its line or sentence;
/// 3. else the last number in the text (`1,234` → `1234`, `-3.5`, `.5`, `3/4`).
///
/// Returns the raw (un-normalised) answer, or `None` if there is none.
pub fn extract_answer(completion: &str) -> Option<String> {
    if let Some(b) = last_box(completion, false) {
        return Some(b.to_string());
    }
    if let Some(a) = answer_is(completion) {
        return Some(a);
    }
    last_number(completion)
}

/// GSM8K ground truth: the text after `####`, commas removed, trimmed.
pub fn gsm8k_reference(answer_field: &str) -> Option<String> {
    let (_, tail) = answer_field.rsplit_once("####")?;
    let r: String = tail.trim().chars().filter(|&c| c != ',').collect();
    let r = r.trim();
    (!r.is_empty()).then(|| r.to_string())
}

/// MATH ground truth: the content of the solution's last complete `\boxed{}` (or `\fbox{}`),
/// trimmed. Unlike [`extract_answer`], an empty box is returned as `""` (two MATH train
/// solutions end in `\boxed{}`); callers may skip such questions.
pub fn math_reference(solution: &str) -> Option<String> {
    last_box(solution, true).map(str::to_string)
}

/// Content of the last complete box (non-empty unless `allow_empty`).
fn last_box(text: &str, allow_empty: bool) -> Option<&str> {
    // A box must close before the start of the box after it: if the later box never closed,
    // an earlier one that reaches it is unclosed too; this keeps the total scan linear.
    let mut limit = text.len();
    while let Some((pos, len)) = prev_box_cmd(text, limit) {
        if let Some(content) = box_content(text, pos + len, limit) {
            let c = content.trim();
            if allow_empty || !c.is_empty() {
                return Some(c);
            }
        }
        limit = pos;
    }
    None
}

/// Start and length of the last `\boxed` / `\fbox` starting before `end`: one backward search
/// for their common part `box`.
fn prev_box_cmd(text: &str, end: usize) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let mut e = end;
    loop {
        let p = text[..e].rfind("box")?;
        if p >= 1 && b[p - 1] == b'\\' && b[p..].starts_with(b"boxed") {
            return Some((p - 1, BOX_CMDS[0].len()));
        }
        if p >= 2 && &b[p - 2..p] == b"\\f" {
            return Some((p - 2, BOX_CMDS[1].len()));
        }
        e = p;
    }
}

/// The argument of a box command whose name ends at `after`, scanning no further than `limit`.
fn box_content(text: &str, after: usize, limit: usize) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = after;
    while i < limit && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    if i >= limit {
        return None;
    }
    match b[i] {
        b'{' => {
            let start = i + 1;
            let mut depth = 1usize;
            let mut j = start;
            while j < limit {
                match b[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(&text[start..j]);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        // `\boxedx`, `\fboxsep`: another command, not a box
        c if c.is_ascii_alphabetic() => None,
        _ => {
            let end = text[i..limit].find(['$', '\n']).map_or(limit, |e| i + e);
            Some(&text[i..end])
        }
    }
}

/// The answer after the last "…he answer is" / "…final answer is".
fn answer_is(text: &str) -> Option<String> {
    const KEY: &str = "answer is";
    let b = text.as_bytes();
    let mut end = text.len();
    let pos = loop {
        let p = text[..end].rfind(KEY)?;
        let before = &b[..p];
        let ok = before.ends_with(b"he ")
            || before.ends_with(b"final ")
            || before.ends_with(b"Final ")
            || before.ends_with(b"FINAL ");
        if ok {
            break p;
        }
        end = p;
    };
    let rest = text[pos + KEY.len()..].trim_start();
    let rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
    // one line
    let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
    // one sentence: a full stop followed by a space (a decimal point is followed by a digit)
    let bl = line.as_bytes();
    let mut cut = line.len();
    for i in 0..bl.len() {
        if bl[i] == b'.' && bl.get(i + 1).is_none_or(|c| c.is_ascii_whitespace()) {
            cut = i;
            break;
        }
    }
    let ans = line[..cut].trim().trim_matches('*').trim();
    let ans = ans.trim_end_matches(['.', '/']).trim();
    (!ans.is_empty()).then(|| ans.to_string())
}

/// The last number in the text: `-?` digits with optional `,ddd` groups, decimals and a `/d`
/// denominator, or `.5`. Commas are removed.
fn last_number(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let last_digit = b.iter().rposition(u8::is_ascii_digit)?;
    let mut start = last_digit;
    while start > 0 && matches!(b[start - 1], b'0'..=b'9' | b'.' | b',' | b'/') {
        start -= 1;
    }
    let run = &b[start..=last_digit];
    // Greedy forward scan of the run; keep the last match.
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < run.len() {
        match match_number(run, i) {
            Some(e) => {
                best = Some((i, e));
                i = e;
            }
            None => i += 1,
        }
    }
    let (s, e) = best?;
    let (s, e) = (start + s, start + e);
    let mut out = String::with_capacity(e - s + 1);
    let negative = s > 0
        && b[s - 1] == b'-'
        && (s < 2
            || !matches!(b[s - 2], b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b')' | b']' | b'}'));
    if negative {
        out.push('-');
    }
    out.extend(text[s..e].chars().filter(|&c| c != ','));
    Some(out)
}

fn digits(run: &[u8], mut i: usize) -> usize {
    while i < run.len() && run[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// End of the number starting at `i`, if one starts there.
fn match_number(run: &[u8], i: usize) -> Option<usize> {
    let mut j = digits(run, i);
    if j == i {
        // `.5`
        if run[i] == b'.' && i + 1 < run.len() && run[i + 1].is_ascii_digit() {
            return Some(digits(run, i + 1));
        }
        return None;
    }
    // thousands groups: `,ddd` not followed by another digit
    while j + 4 <= run.len()
        && run[j] == b','
        && run[j + 1..j + 4].iter().all(u8::is_ascii_digit)
        && run.get(j + 4).is_none_or(|c| !c.is_ascii_digit())
    {
        j += 4;
    }
    // decimals
    if j + 1 < run.len() && run[j] == b'.' && run[j + 1].is_ascii_digit() {
        j = digits(run, j + 1);
    }
    // fraction
    if j + 1 < run.len() && run[j] == b'/' && run[j + 1].is_ascii_digit() {
        j = digits(run, j + 1);
        if j + 1 < run.len() && run[j] == b'.' && run[j + 1].is_ascii_digit() {
            j = digits(run, j + 1);
        }
    }
    Some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_simple_and_nested() {
        assert_eq!(extract_answer("so $\\boxed{42}$.").as_deref(), Some("42"));
        assert_eq!(
            extract_answer("\\boxed{\\frac{\\sqrt{3}}{2}} done").as_deref(),
            Some("\\frac{\\sqrt{3}}{2}")
        );
        assert_eq!(
            extract_answer("\\boxed{\\{1,2\\}}").as_deref(),
            Some("\\{1,2\\}")
        );
    }

    #[test]
    fn last_box_wins() {
        assert_eq!(
            extract_answer("\\boxed{1} then \\boxed{2}").as_deref(),
            Some("2")
        );
        assert_eq!(
            extract_answer("\\boxed{1} then \\fbox{3}").as_deref(),
            Some("3")
        );
        assert_eq!(
            extract_answer("\\fbox{3} then \\boxed{4}").as_deref(),
            Some("4")
        );
    }

    #[test]
    fn box_without_braces() {
        assert_eq!(
            extract_answer("our answer is $\\boxed 2$.").as_deref(),
            Some("2")
        );
        assert_eq!(extract_answer("x = \\boxed 9\nend").as_deref(), Some("9"));
        assert_eq!(extract_answer("\\boxed {7}").as_deref(), Some("7"));
    }

    #[test]
    fn unclosed_or_empty_box_falls_back() {
        assert_eq!(
            extract_answer("\\boxed{1} and then \\boxed{2").as_deref(),
            Some("1")
        );
        assert_eq!(
            extract_answer("The answer is 5. \\boxed{2").as_deref(),
            Some("5")
        );
        assert_eq!(extract_answer("x is 17 so \\boxed{").as_deref(), Some("17"));
        assert_eq!(
            extract_answer("within \\boxed{}. It is 12").as_deref(),
            Some("12")
        );
        assert_eq!(
            extract_answer("\\fboxsep=3pt, 8 apples").as_deref(),
            Some("8")
        );
    }

    #[test]
    fn the_answer_is() {
        assert_eq!(
            extract_answer("So the answer is 42.").as_deref(),
            Some("42")
        );
        assert_eq!(
            extract_answer("The answer is: $\\frac{1}{2}$. Done").as_deref(),
            Some("$\\frac{1}{2}$")
        );
        assert_eq!(
            extract_answer("The final answer is 3.5 hours.\nBye 7").as_deref(),
            Some("3.5 hours")
        );
        assert_eq!(
            extract_answer("The answer is **18**").as_deref(),
            Some("18")
        );
        assert_eq!(
            extract_answer("the answer is\n\n 64").as_deref(),
            Some("64")
        );
        // last occurrence
        assert_eq!(
            extract_answer("The answer is 1. No, the answer is 2.").as_deref(),
            Some("2")
        );
        // "my answer is" is not a trigger; falls back to the last number
        assert_eq!(extract_answer("my answer is 3 or 4").as_deref(), Some("4"));
    }

    #[test]
    fn last_number_fallback() {
        assert_eq!(
            extract_answer("She has 1,234 apples").as_deref(),
            Some("1234")
        );
        assert_eq!(
            extract_answer("total: 12,345,678.5 units").as_deref(),
            Some("12345678.5")
        );
        assert_eq!(extract_answer("it is -3 degrees").as_deref(), Some("-3"));
        assert_eq!(extract_answer("x=-7").as_deref(), Some("-7"));
        assert_eq!(extract_answer("10-3").as_deref(), Some("3"));
        assert_eq!(extract_answer("about 3/4 of it").as_deref(), Some("3/4"));
        assert_eq!(extract_answer("costs .5 dollars").as_deref(), Some(".5"));
        assert_eq!(extract_answer("We get 72.").as_deref(), Some("72"));
        assert_eq!(extract_answer("values 1,2,3").as_deref(), Some("3"));
        assert_eq!(extract_answer("π ≈ 3.14159…").as_deref(), Some("3.14159"));
    }

    #[test]
    fn nothing_to_extract() {
        assert_eq!(extract_answer(""), None);
        assert_eq!(extract_answer("no digits here"), None);
        assert_eq!(extract_answer("The answer is"), None);
        assert_eq!(extract_answer("\\boxed{"), None);
    }

    #[test]
    fn references() {
        assert_eq!(
            gsm8k_reference("blah <<2*3=6>>\n#### 1,200").as_deref(),
            Some("1200")
        );
        assert_eq!(gsm8k_reference("#### -5 ").as_deref(), Some("-5"));
        assert_eq!(gsm8k_reference("no marker 5"), None);
        assert_eq!(gsm8k_reference("####  "), None);
        assert_eq!(
            math_reference("so $x = \\boxed{\\frac{1}{2}}$.").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(math_reference("hence $\\boxed 9$.").as_deref(), Some("9"));
        assert_eq!(math_reference("no box"), None);
        assert_eq!(
            math_reference("there are $\\boxed{}$ primes").as_deref(),
            Some("")
        );
        assert_eq!(
            math_reference("\\boxed{1} then \\boxed{2").as_deref(),
            Some("1")
        );
    }
}
