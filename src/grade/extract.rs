//! Final-answer extraction from model completions and reference solutions.
//!
//! All scans work from the end of the text and touch each byte a bounded number of times, so
//! a completion of any length is handled in linear time. Only ASCII bytes are used as cut
//! points, so slices always fall on UTF-8 character boundaries.

const BOX_CMDS: [&str; 2] = ["\\boxed", "\\fbox"];

/// Final answer of a model completion:
/// 1. the last `\boxed{…}` / `\fbox{…}` (brace-matched, nested braces allowed; `\boxed 5` without
///    braces takes the text up to the next `$` or line end). A box that never closes, or is
///    empty, is skipped and the previous box is tried. Boxes just before it that are separated
///    from it only by connectors (`,`, `;`, `and`, `or`, `\text{ and }`, `\quad`, `$`, spaces)
///    are parts of the same answer: `\boxed{1}, \boxed{2}` is returned as written (each part
///    re-boxed, duplicates dropped) and [`crate::grade::Answer::parse`] reads it as a set;
/// 2. else the text after the last "he answer is" / "final answer is" (leading `:` and
///    surrounding whitespace / `*` dropped), up to the end of its line or sentence; if that is
///    itself a sentence ("The answer is: the largest $n$ is 34"), the answer inside it;
/// 3. else the text after the last "Answer:" / "**Final Answer:**" / "**Answer**" header, up to
///    the end of its line (the next line if the header ends its line); if that text is a
///    sentence ("The largest $n$ is 34."), the answer inside it (step 4 or 5 on it);
/// 4. else the last math span (`$…$`, `$$…$$`, `\(…\)`, `\[…\]`) if no digit follows it in
///    the text; of a chain `a = b = c` whose last side has no letters, that side;
/// 5. else the last number in the text (`1,234` → `1234`, `-3.5`, `.5`, `3/4`).
///
/// Returns the raw (un-normalised) answer, or `None` if there is none.
pub fn extract_answer(completion: &str) -> Option<String> {
    if let Some(b) = boxed_answer(completion) {
        return Some(b);
    }
    if let Some(a) = answer_is(completion) {
        return Some(a);
    }
    if let Some(a) = answer_header(completion) {
        return Some(a);
    }
    if let Some(a) = final_math_span(completion) {
        return Some(a.to_string());
    }
    last_number(completion)
}

/// At most this many boxes are joined into one multi-part answer.
const MAX_BOX_PARTS: usize = 32;

/// The last non-empty complete box, with the boxes joined to it by connectors (see
/// [`extract_answer`]).
fn boxed_answer(text: &str) -> Option<String> {
    let mut limit = text.len();
    let (mut start, last) = loop {
        let (pos, len) = prev_box_cmd(text, limit)?;
        if let Some((c, _)) = box_content_span(text, pos + len, limit) {
            if !c.trim().is_empty() {
                break (pos, c.trim());
            }
        }
        limit = pos;
    };
    let mut parts = vec![last];
    while parts.len() < MAX_BOX_PARTS {
        // cheap test first: an earlier part's closing brace, then only connectors, right before
        // this box (so a single-box completion is not scanned again to its start)
        let mut from = start.saturating_sub(66);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let window = &text[from..start];
        if !window
            .rfind('}')
            .is_some_and(|q| is_connector(&window[q + 1..]))
        {
            break;
        }
        let Some((pos, len)) = prev_box_cmd(text, start) else {
            break;
        };
        let Some((c, end)) = box_content_span(text, pos + len, start) else {
            break;
        };
        if c.trim().is_empty() || !is_connector(&text[end..start]) {
            break;
        }
        parts.push(c.trim());
        start = pos;
    }
    parts.reverse();
    let mut uniq: Vec<&str> = Vec::with_capacity(parts.len());
    for p in parts {
        if !uniq.contains(&p) {
            uniq.push(p);
        }
    }
    if uniq.len() == 1 {
        return Some(uniq[0].to_string());
    }
    let mut out = String::new();
    for (k, p) in uniq.iter().enumerate() {
        if k > 0 {
            out.push_str(", ");
        }
        out.push_str("\\boxed{");
        out.push_str(p);
        out.push('}');
    }
    Some(out)
}

/// Text between two boxes that makes them parts of one answer: only separators (`,` `;` `&`
/// `$` `=` brackets, spaces), the words `and` / `or`, single letters (`x = \boxed{2}, x =
/// \boxed{-3}`), and spacing or text commands around them.
fn is_connector(t: &str) -> bool {
    t.len() <= 64
        && t.split(|c: char| " \t\r\n$,;&{}\\()[]=".contains(c))
            .all(|w| {
                // a single letter: the variable of `x = \boxed{2} or x = \boxed{-3}`
                (w.len() == 1 && w.as_bytes()[0].is_ascii_alphabetic())
                    || matches!(
                        w,
                        "" | "and"
                            | "or"
                            | "text"
                            | "textnormal"
                            | "textrm"
                            | "mbox"
                            | "quad"
                            | "qquad"
                            | "hspace"
                            | "1em"
                            | "!"
                            | ":"
                    )
            })
}

/// `Some(parts)` when `s` (trimmed, `$` around allowed) is two or more boxes separated only by
/// connectors, as [`extract_answer`] returns a multi-part answer.
pub(crate) fn split_boxes(s: &str) -> Option<Vec<&str>> {
    let t = s.trim();
    if t.len() < 16 || !t.ends_with(['}', '$']) {
        return None;
    }
    let first = t.find("\\boxed")?;
    t[first + 6..].find("\\boxed")?;
    if !is_connector(&t[..first]) {
        return None;
    }
    let mut parts = Vec::new();
    let mut pos = first;
    loop {
        let (c, end) = box_content_span(t, pos + 6, t.len())?;
        // a box inside a part: not a list this function made (and no recursion on it)
        if c.contains("\\boxed") {
            return None;
        }
        parts.push(c.trim());
        if parts.len() > MAX_BOX_PARTS {
            return None;
        }
        match t[end..].find("\\boxed") {
            Some(k) => {
                if !is_connector(&t[end..end + k]) {
                    return None;
                }
                pos = end + k;
            }
            None => {
                if !is_connector(&t[end..]) {
                    return None;
                }
                break;
            }
        }
    }
    (parts.len() > 1).then_some(parts)
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
    box_content_span(text, after, limit).map(|(c, _)| c)
}

/// [`box_content`] and the index just after the box.
fn box_content_span(text: &str, after: usize, limit: usize) -> Option<(&str, usize)> {
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
                            return Some((&text[start..j], j + 1));
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
            Some((&text[i..end], end))
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
    if ans.is_empty() {
        return None;
    }
    Some(sentence_answer(ans).unwrap_or_else(|| ans.to_string()))
}

/// If `s` is a sentence ("The largest $n$ is 34"), the answer inside it: its last math span if
/// no digit follows it, else its last number.
fn sentence_answer(s: &str) -> Option<String> {
    if !is_sentence(s) {
        return None;
    }
    final_math_span(s)
        .map(str::to_string)
        .or_else(|| last_number(s))
}

/// The answer after the last "Answer:" header (`Final Answer:`, `**Answer:**`, `**Final
/// Answer**` on its own line), see [`extract_answer`].
fn answer_header(text: &str) -> Option<String> {
    let b = text.as_bytes();
    // the two spellings are searched for separately, each backwards from its last hit, so the
    // whole scan stays linear
    let mut lower = text.rfind("nswer");
    let mut upper = text.rfind("NSWER");
    let rest = loop {
        let p = lower.max(upper)?;
        if lower == Some(p) {
            lower = text[..p].rfind("nswer");
        } else {
            upper = text[..p].rfind("NSWER");
        }
        // `Answer`, `ANSWER`, or `final answer`
        let capital = p >= 1 && b[p - 1] == b'A';
        let final_lower = p >= 1
            && b[p - 1] == b'a'
            && (text[..p - 1].ends_with("final ") || text[..p - 1].ends_with("Final "));
        if !(capital || final_lower) || (p >= 2 && b[p - 2].is_ascii_alphabetic()) {
            continue;
        }
        let after = &text[p + 5..];
        let a = after
            .trim_start_matches('*')
            .trim_start_matches([' ', '\t']);
        if let Some(r) = a.strip_prefix(':') {
            break r;
        }
        // a bold header on its own line: `**Final Answer**`
        if after.starts_with("**") && a.starts_with(['\n', '\r']) {
            break a;
        }
    };
    let rest = rest.trim_start_matches(['*', ' ', '\t']);
    // the rest of the line, or the next non-empty line
    let rest = rest.trim_start();
    let line = rest[..rest.find('\n').unwrap_or(rest.len())].trim();
    let ans = line
        .trim_matches('*')
        .trim()
        .trim_end_matches(['.', '*'])
        .trim();
    if ans.is_empty() {
        return None;
    }
    Some(sentence_answer(ans).unwrap_or_else(|| ans.to_string()))
}

/// A sentence rather than an answer: starts with a word of two or more letters (not a
/// command) and has a digit or a math span later.
fn is_sentence(s: &str) -> bool {
    let word = s.bytes().take_while(u8::is_ascii_alphabetic).count();
    word >= 2
        && s.as_bytes().get(word) == Some(&b' ')
        && s[word..].bytes().any(|c| c.is_ascii_digit() || c == b'$')
}

/// Closing delimiter of the last math span: (start of the delimiter, its length).
fn last_math_close(text: &str) -> Option<(usize, &'static str, &'static str)> {
    let b = text.as_bytes();
    let mut best: Option<(usize, &'static str, &'static str)> = None;
    for (open, close) in [("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(p) = text.rfind(close) {
            if best.is_none_or(|(q, _, _)| p > q) {
                best = Some((p, open, close));
            }
        }
    }
    // the last unescaped `$`
    let mut e = text.len();
    while let Some(p) = text[..e].rfind('$') {
        if p > 0 && b[p - 1] == b'\\' {
            e = p;
            continue;
        }
        if best.is_none_or(|(q, _, _)| p > q) {
            let double = p > 0 && b[p - 1] == b'$';
            best = Some(if double {
                (p - 1, "$$", "$$")
            } else {
                (p, "$", "$")
            });
        }
        break;
    }
    best
}

/// The last math span's content, if no digit follows it (see [`extract_answer`]); of a chain
/// `a = b = c` whose last side has no letters, that side.
fn final_math_span(text: &str) -> Option<&str> {
    let (close_at, open, close) = last_math_close(text)?;
    if text[close_at + close.len()..]
        .bytes()
        .any(|c| c.is_ascii_digit())
    {
        return None;
    }
    let before = &text[..close_at];
    let open_at = if open == "$" {
        // the previous unescaped `$`
        let b = before.as_bytes();
        let mut e = before.len();
        loop {
            let p = before[..e].rfind('$')?;
            if p > 0 && b[p - 1] == b'\\' {
                e = p;
                continue;
            }
            break p;
        }
    } else {
        before.rfind(open)?
    };
    let content = before[open_at + open.len()..].trim();
    if content.is_empty() {
        return None;
    }
    // `3 \times 4 = 12`: the last side, when it is a value
    if let Some(eq) = content.rfind('=') {
        let last = content[eq + 1..].trim();
        let letters = last.split('\\').enumerate().any(|(k, piece)| {
            let piece = if k == 0 {
                piece
            } else {
                piece.trim_start_matches(|c: char| c.is_ascii_alphabetic())
            };
            piece.bytes().any(|c| c.is_ascii_alphabetic())
        });
        let nested = content[..eq].bytes().filter(|&c| c == b'{').count()
            != content[..eq].bytes().filter(|&c| c == b'}').count();
        if !last.is_empty() && !letters && !nested {
            return Some(last);
        }
    }
    Some(content)
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
