//! The module graph of `src/` against the order the README's Architecture section states:
//! dependencies run one way, so every `crate::` path of a top-level module names a module
//! below it in [`ORDER`], which also rules out import cycles between them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules of the library, top first; each may import only modules after it.
/// From the README's Architecture section: `report` (reads run directories through
/// `pipeline`'s layout) → `pipeline` → `config` → the stages, a later stage above an earlier
/// one → `generate` (the one engine interface of sample and eval) → `serve` and `decode` →
/// the shared leaves.
// one line per group (`tensorboard` is longer than rustfmt's short array elements)
#[rustfmt::skip]
const ORDER: &[&str] = &[
    "report", "pipeline", "config", // the whole run
    "eval", "train", "weight", "cluster", "sample", // the stages, last first
    "generate", "serve", "decode", // the engines of sample and eval
    "data", "schema", "progress", "stats", "grade", "model", "tensorboard", "io", // the shared leaves
];

/// Modules the README says import nothing of east.
const IMPORT_NOTHING: &[&str] = &["grade", "model", "stats"];

/// The Rust text of `src` without comments, string and character literals, where a path in
/// prose or in a message is not an import.
fn code_of(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(i + k).copied();
        match c[i] {
            // a raw string: r"…", r#"…"#, …
            'r' if at(1) == Some('"')
                || (at(1) == Some('#') && matches!(at(2), Some('"' | '#'))) =>
            {
                let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
                let close: String = std::iter::once('"')
                    .chain("#".repeat(hashes).chars())
                    .collect();
                let body = i + 2 + hashes;
                let rest: String = c[body..].iter().collect();
                i = body
                    + rest
                        .find(&close)
                        .map_or(rest.len(), |e| rest[..e].chars().count() + close.len());
                out.push_str("\"\"");
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // a character literal ('x', '\n', '\''), not a lifetime
            '\'' if at(1) == Some('\\') => {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if at(2) == Some('\'') => i += 3,
            '/' if at(1) == Some('/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// The top-level modules named by `crate::` paths in `code` (`crate::a::b`, `crate::{a, b::c}`).
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let end = group
                .find(|c: char| {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => return true,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    false
                })
                .unwrap_or(group.len());
            let mut depth = 0;
            let mut start = 0;
            let body = &group[..end];
            for (i, c) in body.char_indices().chain([(body.len(), ',')]) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(first_segment(&body[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(first_segment(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Top-level module → the top-level modules its files import.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if ["lib", "main", "bin"].contains(&name.as_str()) {
            continue; // the crate root declares the modules; the binaries sit above them all
        }
        let mut files = Vec::new();
        collect_rs(&path, &mut files);
        let deps = graph.entry(name.clone()).or_default();
        for f in files {
            let code = code_of(&std::fs::read_to_string(&f).unwrap());
            deps.extend(imports(&code).into_iter().filter(|m| *m != name));
        }
    }
    graph
}

fn collect_rs(path: &Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            collect_rs(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn modules_import_only_modules_below_them() {
    let graph = module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let placed: BTreeSet<&str> = ORDER.iter().copied().collect();
    let modules: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    assert_eq!(
        modules, placed,
        "every top-level module of src/ has a place in ORDER (and the README's Architecture section)"
    );
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let floor = match IMPORT_NOTHING.contains(&module.as_str()) {
            true => ORDER.len(),
            false => rank(module).unwrap(),
        };
        // a name that is no module is an item of the crate root
        let against: Vec<&String> = deps
            .iter()
            .filter(|d| rank(d).is_some_and(|r| r <= floor))
            .collect();
        if !against.is_empty() {
            wrong.push(format!("{module} → {against:?}"));
        }
    }
    assert!(wrong.is_empty(), "imports against the order: {wrong:?}");
}

#[test]
fn the_import_reader_finds_paths_and_groups_but_not_prose() {
    let code = code_of(
        "use crate::io::write_atomic;\n\
         use crate::{cluster, model::{Llama, load}, weight};\n\
         // see crate::report\n\
         let s = \"crate::pipeline \\\" crate::report\";\n\
         let r = r#\"crate::report \" crate::train\"#;\n\
         let (q, b) = ('\"', '{');\n\
         let x = crate::decode::stream_rng(1, \"q\", 0);\n",
    );
    let found: Vec<String> = imports(&code).into_iter().collect();
    assert_eq!(found, ["cluster", "decode", "io", "model", "weight"]);
}
