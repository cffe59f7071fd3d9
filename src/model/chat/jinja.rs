//! Executing a model's own chat template (Jinja) the way transformers' `apply_chat_template`
//! does: trim_blocks + lstrip_blocks, `raise_exception`, `strftime_now` (at `model.date`), a
//! `tojson` that writes what Python's `json.dumps` writes, the Python string/dict methods
//! (`.strip()`, `.startswith()`, `.items()`, … — minijinja-contrib's pycompat), and the
//! tokenizer's special tokens (`bos_token`, `eos_token`, …) as variables.

use std::collections::BTreeMap;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

use super::date::PinnedDate;
use super::Message;

/// A compiled chat template with the values it is rendered with.
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, … (transformers passes `tokenizer.special_tokens_map`).
    special_tokens: BTreeMap<String, String>,
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
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| describe(&e))?;
        Ok(Self {
            source: source.to_string(),
            env,
            special_tokens,
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
        let template = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        template.render(ctx).map_err(|e| describe(&e))
    }
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
