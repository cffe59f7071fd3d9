//! The README's config reference against the schema: every documented key exists with the
//! documented default, and every key of the schema is documented. Also: every subcommand of
//! `east --help` has a README section, and every config in configs/ loads.

use std::collections::BTreeSet;

use east::config::Config;

const README: &str = include_str!("../README.md");

/// Rows of the table in the README's `## Config` section: (key, default cell).
fn documented_keys() -> Vec<(String, String)> {
    let section = README
        .split("\n## Config\n")
        .nth(1)
        .expect("README has a ## Config section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split(" | ")
                .map(str::trim)
                .collect();
            let key = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            key.contains('.').then(|| {
                (
                    key.to_string(),
                    cells.get(1).copied().unwrap_or_default().to_string(),
                )
            })
        })
        .collect()
}

/// A TOML document setting one (possibly nested) key.
fn toml_setting(key: &str, value: &str) -> String {
    let (table, leaf) = key.rsplit_once('.').unwrap();
    format!("[{table}]\n{leaf} = {value}\n")
}

/// Leaf keys of a TOML table, dotted.
fn leaf_keys(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// Keys whose default is "unset" (an `Option`), with a valid example value each.
const OPTIONAL_KEYS: &[(&str, &str)] = &[
    ("model.adapter", "\"adapters/round1\""),
    ("data.limit", "100"),
    ("data.fields.id", "\"uid\""),
    ("train.max_steps", "10"),
    ("train.memory_limit", "44.0"),
    ("eval.limit", "50"),
    ("run.samples", "\"shards/samples.jsonl\""),
    ("server.model", "\"east\""),
    ("server.api_key_env", "\"OPENAI_API_KEY\""),
    ("server.n_per_request", "1"),
    ("server.launch", "\"llama-server -m {model} --port {port}\""),
];

#[test]
fn every_documented_key_exists_with_its_documented_default() {
    let documented = documented_keys();
    assert!(
        documented.len() > 40,
        "found the table ({} rows)",
        documented.len()
    );
    let defaults = Config::default();
    for (key, default) in &documented {
        if default == "none" {
            let (_, example) = OPTIONAL_KEYS
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| {
                    panic!("README says `{key}` has no default, but it is not an optional key")
                });
            let config = Config::from_toml_str(&toml_setting(key, example), "README", &[])
                .unwrap_or_else(|e| panic!("README key `{key}`: {e}"));
            assert_ne!(config, defaults, "`{key}` = {example} changes the config");
            continue;
        }
        let value = default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .unwrap_or_else(|| panic!("`{key}`: default `{default}` is not code"));
        let config = Config::from_toml_str(&toml_setting(key, value), "README", &[])
            .unwrap_or_else(|e| panic!("README key `{key}` = {value}: {e}"));
        assert_eq!(
            config, defaults,
            "README's default of `{key}` ({value}) is not the real default"
        );
    }
}

#[test]
fn every_key_of_the_schema_is_documented() {
    let documented: BTreeSet<String> = documented_keys().into_iter().map(|(k, _)| k).collect();
    let mut schema = BTreeSet::new();
    leaf_keys(
        "",
        &toml::Value::try_from(Config::default()).unwrap(),
        &mut schema,
    );
    schema.extend(OPTIONAL_KEYS.iter().map(|(k, _)| k.to_string()));
    let missing: Vec<&String> = schema.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "config keys missing from the README's table: {missing:?}"
    );
    let extra: Vec<&String> = documented.difference(&schema).collect();
    assert!(
        extra.is_empty(),
        "README documents keys the schema lacks: {extra:?}"
    );
}

#[test]
fn every_subcommand_has_a_readme_section() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_east"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 9, "{commands:?}");
    for c in commands {
        assert!(
            README.contains(&format!("### `east {c}`")),
            "README has no section for `east {c}`"
        );
    }
}

#[test]
fn every_shipped_config_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
            // The variants documented in its comments (`--set key=value …`) load too.
            for line in std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with('#') && l.contains("--set "))
            {
                let sets: Vec<String> = line
                    .split("--set ")
                    .skip(1)
                    .map(|s| s.split("  ").next().unwrap().trim().to_string())
                    .collect();
                Config::load(Some(&path), &sets).unwrap_or_else(|e| {
                    panic!("{}: documented variant `{line}`: {e}", path.display())
                });
            }
        }
    }
    assert!(n >= 5, "configs/ holds the 1B, 8B and demo configs");
}
