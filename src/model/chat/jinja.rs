//! Executing a model's own chat template (Jinja) the way transformers' `apply_chat_template`
//! does: trim_blocks + lstrip_blocks, `raise_exception`, `strftime_now` (at `model.date`), a
//! `tojson` that writes what Python's `json.dumps` writes, the Python string/dict methods
//! (`.strip()`, `.startswith()`, `.items()`, … — minijinja-contrib's pycompat), and the
//! tokenizer's special tokens (`bos_token`, `eos_token`, …) as variables.
//!
//! A template is code from the model's author, so it runs within a budget: [`FUEL`]
//! instructions (minijinja's fuel: a loop that does not end stops there), [`MEMORY`] bytes
//! and [`TIME`] ([`budget`]: a template that builds ever larger strings stops there). Going
//! over it is an error naming the model's template; a template that went over its memory or
//! time budget is refused from then on.

mod budget;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use super::date::PinnedDate;
use super::Message;

/// Instructions one rendering may execute. The templates of tests/fixtures/chat_templates
/// use at most 1,490 for a conversation of 22 messages (`real_templates_use_a_fraction_of_the_fuel`);
/// two nested `range(100000)` loops stop here after about a quarter of a second.
pub const FUEL: u64 = 5_000_000;

/// Bytes one rendering may hold at once (its output, strings and lists it builds).
pub const MEMORY: usize = 256 << 20;

/// Wall-clock time one rendering may take (fuel bounds the instructions, not what one costs).
pub const TIME: std::time::Duration = std::time::Duration::from_secs(20);

/// A compiled chat template with the values it is rendered with.
pub struct ChatTemplate {
    source: String,
    env: Arc<Environment<'static>>,
    /// `bos_token`, `eos_token`, … (transformers passes `tokenizer.special_tokens_map`).
    special_tokens: BTreeMap<String, String>,
    /// Set when a rendering went over the memory or time budget (its thread is abandoned).
    refused: Mutex<Option<String>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("chars", &self.source.len())
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, keys in the order the template built them.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([i, k]) => (i.clone(), k.clone()),
        Some(_) => return Err(invalid("tojson: separators must be a pair".into())),
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

struct JsonStyle {
    indent: Option<usize>,
    item: String,
    key: String,
    sort_keys: bool,
}

impl JsonStyle {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    }

    /// `[a, b]` / `{"k": v}` with this style's separators and indentation; empty ones as
    /// `[]` / `{}` (as Python writes them).
    fn write_items(
        &self,
        open: char,
        close: char,
        items: Vec<(Option<String>, Value)>,
        level: usize,
        out: &mut String,
    ) -> Result<(), Error> {
        out.push(open);
        let empty = items.is_empty();
        for (i, (k, x)) in items.into_iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item);
            }
            self.newline(level + 1, out);
            if let Some(k) = k {
                out.push_str(&json_string(&k));
                out.push_str(&self.key);
            }
            self.write(&x, level + 1, out)?;
        }
        if !empty {
            self.newline(level, out);
        }
        out.push(close);
        Ok(())
    }

    fn write(&self, v: &Value, level: usize, out: &mut String) -> Result<(), Error> {
        use minijinja::value::ValueKind as K;
        match v.kind() {
            K::Undefined | K::None => out.push_str("null"),
            K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            K::Number => match (v.as_i64(), f64::try_from(v.clone())) {
                (Some(i), _) if v.is_integer() => out.push_str(&i.to_string()),
                (_, Ok(f)) => out.push_str(&python_float(f)),
                _ => out.push_str(&v.to_string()),
            },
            K::String => out.push_str(&json_string(v.as_str().unwrap_or_default())),
            K::Map => {
                let mut items = Vec::new();
                for k in v.try_iter()? {
                    let x = v.get_item(&k)?;
                    items.push((Some(k.to_string()), x));
                }
                if self.sort_keys {
                    items.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_items('{', '}', items, level, out)?;
            }
            K::Seq | K::Iterable => {
                let items = v.try_iter()?.map(|x| (None, x)).collect();
                self.write_items('[', ']', items, level, out)?;
            }
            other => return Err(invalid(format!("tojson: cannot serialise a {other}"))),
        }
        Ok(())
    }
}

/// A JSON string as Python writes it with ensure_ascii=False (the same escapes as serde_json).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Python's `repr(float)` for the values templates carry (`1.0`, `2.5`, `1e-05`).
fn python_float(f: f64) -> String {
    if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
        return format!("{f:.1}");
    }
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("+", e),
            };
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

impl ChatTemplate {
    /// Compiles `source`; `special_tokens` are the template variables `bos_token`, `eos_token`,
    /// …; `date` is what `strftime_now` reports. A syntax error names the template's line.
    pub fn new(
        source: &str,
        special_tokens: BTreeMap<String, String>,
        date: PinnedDate,
    ) -> Result<Self, String> {
        warm_up();
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", move |format: String| {
            date.strftime(&format)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e))
        });
        env.add_filter("tojson", tojson);
        env.set_fuel(Some(FUEL));
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| describe(&e))?;
        Ok(Self {
            source: source.to_string(),
            env: Arc::new(env),
            special_tokens,
            refused: Mutex::new(None),
        })
    }

    /// The template text as the model carries it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=…)`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut ctx: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.insert(
            "messages".into(),
            Value::from(minijinja::value::Serde(messages)),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        if let Some(why) = self.refused.lock().expect("refused lock").as_ref() {
            return Err(why.clone());
        }
        let env = Arc::clone(&self.env);
        let limits = budget::Limits {
            memory: MEMORY,
            time: TIME,
        };
        let rendered = budget::run(limits, move || {
            let template = env.get_template(NAME).map_err(|e| describe(&e))?;
            template.render(ctx).map_err(|e| describe_run(&e))
        });
        match rendered {
            Ok(out) => out,
            Err(e @ (budget::Exceeded::Memory(_) | budget::Exceeded::Time(_))) => {
                let why = format!(
                    "rendering stopped: {e}, past east's limits for a chat template ({} MiB, {:.0} s); this template is refused from now on",
                    MEMORY >> 20,
                    TIME.as_secs_f64()
                );
                *self.refused.lock().expect("refused lock") = Some(why.clone());
                Err(why)
            }
            Err(e) => Err(format!("rendering failed: {e}")),
        }
    }
}

/// Initialises, outside any budget, the lazy statics of minijinja a rendering may touch first
/// (its small-integer strings, its default formatter): a budgeted thread parked inside their
/// initialisation would hold their lock for good ([`budget`]).
fn warm_up() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let env = Environment::new();
        let _ = env.render_str("{{ 1 }}{{ 1.5 }}{{ [1, 'a'] | length }}{{ 'a' ~ 1 }}", ());
    });
}

/// A rendering error; running out of fuel says what the limit is.
fn describe_run(e: &Error) -> String {
    if e.kind() == ErrorKind::OutOfFuel {
        return format!(
            "rendering stopped after {FUEL} template instructions (east's limit for a chat template; a loop that does not end?): {}",
            describe(e)
        );
    }
    describe(e)
}

/// An error with its chain (minijinja puts the line in the outer error, the cause inside).
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(source: &str) -> ChatTemplate {
        let specials = BTreeMap::from([("bos_token".to_string(), "<s>".to_string())]);
        ChatTemplate::new(source, specials, "2024-07-26".parse().unwrap()).unwrap()
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = tpl("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok");
        let e = t.render(&[Message::system("s")], false).unwrap_err();
        assert!(e.contains("first must be user"), "{e}");
        assert_eq!(t.render(&[Message::user("u")], false).unwrap(), "ok");
    }

    #[test]
    fn python_methods_dates_and_blocks() {
        let t = tpl("{{ bos_token }}{% for m in messages %}\n  {{ m.content.strip().upper() }}|{{ m['role'].startswith('us') }}\n{% endfor %}{{ strftime_now('%d %b %Y') }}");
        let out = t.render(&[Message::user("  hi ")], false).unwrap();
        // Expected: jinja2 with trim_blocks + lstrip_blocks renders the same template (with a
        // literal in place of strftime_now) as '<s>  HI|True\nx': the newline after a block tag
        // goes, a variable line's indentation stays, a bool prints as Python's `True`.
        assert_eq!(out, "<s>  HI|True\n26 Jul 2024");
    }

    // Expected strings: Python 3, json.dumps(x, ensure_ascii=False[, indent=2]).
    #[test]
    fn tojson_writes_what_python_writes() {
        let t = tpl("{{ {'b': [1, 2.5, 'é\"', 1e-5], 'a': none} | tojson }}");
        assert_eq!(
            t.render(&[], false).unwrap(),
            r#"{"b": [1, 2.5, "é\"", 1e-05], "a": null}"#
        );
        let t = tpl("{{ {'b': 1, 'a': []} | tojson(sort_keys=true) }}");
        assert_eq!(t.render(&[], false).unwrap(), r#"{"a": [], "b": 1}"#);
        let t = tpl("{{ {'a': [1, {}], 'b': true} | tojson(indent=2) }}");
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": true\n}"
        );
    }

    /// The real templates of tests/fixtures/chat_templates stay far inside the fuel budget:
    /// a conversation of 22 messages uses under 1% of [`FUEL`] (1,490 at most, Mistral-Nemo's).
    #[test]
    fn real_templates_use_a_fraction_of_the_fuel() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("chat_templates_reference.json")).unwrap(),
        )
        .unwrap();
        let mut conversation = vec![Message::system("Please reason step by step.")];
        for k in 0..10 {
            conversation.push(Message::user(format!("What is {k} + {k}?")));
            conversation.push(Message::assistant(format!(
                "{k} + {k} = \\boxed{{{}}}",
                2 * k
            )));
        }
        let mut checked = 0;
        for entry in std::fs::read_dir(root.join("chat_templates")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "jinja") {
                continue;
            }
            let name = path.file_stem().unwrap().to_str().unwrap();
            let specials: BTreeMap<String, String> =
                serde_json::from_value(reference["specials"][name].clone()).unwrap();
            let t = ChatTemplate::new(
                &std::fs::read_to_string(&path).unwrap(),
                specials.clone(),
                "2024-07-26".parse().unwrap(),
            )
            .unwrap();
            let mut ctx: BTreeMap<String, Value> = specials
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            // Mistral-Nemo renders the system message only before the last user turn
            let mut msgs = conversation.clone();
            msgs.push(Message::user("And 11 + 11?"));
            ctx.insert(
                "messages".into(),
                Value::from(minijinja::value::Serde(&msgs)),
            );
            ctx.insert("add_generation_prompt".into(), Value::from(true));
            let captured = t
                .env
                .get_template(NAME)
                .unwrap()
                .render_captured(ctx)
                .unwrap();
            let (used, _) = captured.state().fuel_levels().unwrap();
            assert!(used * 100 < FUEL, "{name}: {used} instructions");
            assert!(
                used > 100,
                "{name}: {used} instructions: was the conversation rendered?"
            );
            checked += 1;
        }
        assert!(checked >= 7, "{checked} templates");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let e = ChatTemplate::new(
            "{% for m in messages %}",
            BTreeMap::new(),
            "2024-07-26".parse().unwrap(),
        )
        .unwrap_err();
        assert!(e.contains("line 1") || e.contains("syntax"), "{e}");
    }
}
