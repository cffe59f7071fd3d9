//! `east merge`: the shard files of one sampling run joined into one samples file.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::{meta_path, SampleMeta, Shard};
use crate::io::{read_jsonl, write_json_atomic, InputError};
use crate::schema::SampleRecord;

/// Reads a samples file's `<out>.meta.json`.
fn read_meta(input: &Path) -> Result<SampleMeta, InputError> {
    let path = meta_path(input);
    let text = std::fs::read_to_string(&path).map_err(|e| InputError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| InputError::file(&path, format!("unreadable: {e}")))
}

/// `i/N`, or "unsharded".
fn shard_name(shard: Option<Shard>) -> String {
    shard.map_or("unsharded".into(), |s| {
        format!("shard {}/{}", s.index, s.count)
    })
}

/// Joins the shard files of one sampling run into one samples file in question order. Every
/// shard 0..N−1 must be given exactly once, complete, made with the same settings, and hold the
/// questions its meta says (an empty shard is valid: with few decoding units some shards get no
/// question); no question may be missing or duplicated.
pub fn merge_shards(inputs: &[PathBuf], out: &Path) -> anyhow::Result<usize> {
    let mut all: Vec<(usize, SampleRecord)> = Vec::new();
    let mut first: Option<(&PathBuf, SampleMeta)> = None;
    let mut given: BTreeMap<usize, &PathBuf> = BTreeMap::new();
    for input in inputs {
        let meta = read_meta(input)?;
        check_shard(input, &meta, first.as_ref(), &mut given)?;
        all.extend(read_shard(input, &meta)?);
        if first.is_none() {
            first = Some((input, meta));
        }
    }
    let (_, meta) = first.ok_or_else(|| anyhow::anyhow!("no input files"))?;
    check_every_shard(&meta, &given)?;
    let all = in_question_order(all, meta.total)?;
    let mut writer = crate::io::AtomicFile::create(out)?;
    for r in &all {
        writer.write_json_line(r)?;
    }
    write_json_atomic(
        &meta_path(out),
        &SampleMeta {
            settings: meta.settings,
            shard: None,
            questions: all.len(),
            total: Some(all.len()),
            complete: true,
            server: meta.server,
        },
    )?;
    writer.commit()?;
    Ok(all.len())
}

/// Refuses `input` unless it is complete, a shard of the same run as the `first` input, and
/// the first input to be its shard (recorded in `given`).
fn check_shard<'a>(
    input: &'a PathBuf,
    meta: &SampleMeta,
    first: Option<&(&PathBuf, SampleMeta)>,
    given: &mut BTreeMap<usize, &'a PathBuf>,
) -> anyhow::Result<()> {
    if !meta.complete {
        anyhow::bail!(
            "{} is not complete (its sampling run has not finished)",
            input.display()
        );
    }
    let shard = meta.shard.unwrap_or(Shard { index: 0, count: 1 });
    if let Some((p0, m0)) = first {
        if m0.settings != meta.settings {
            anyhow::bail!(
                "{} was sampled with other settings than {}",
                input.display(),
                p0.display()
            );
        }
        if m0.shard.map_or(1, |s| s.count) != shard.count || m0.total != meta.total {
            anyhow::bail!(
                "{} ({}) and {} ({}) are not shards of one run",
                input.display(),
                shard_name(meta.shard),
                p0.display(),
                shard_name(m0.shard)
            );
        }
    }
    if let Some(other) = given.insert(shard.index, input) {
        anyhow::bail!(
            "{} and {} are both {}: give each shard once",
            other.display(),
            input.display(),
            shard_name(meta.shard)
        );
    }
    Ok(())
}

/// The records of one shard file with their question indices; it must hold the questions its
/// meta says.
fn read_shard(input: &Path, meta: &SampleMeta) -> anyhow::Result<Vec<(usize, SampleRecord)>> {
    let empty = std::fs::metadata(input)
        .map_err(|e| InputError::io(input, e))?
        .len()
        == 0;
    let records = if empty {
        Vec::new()
    } else {
        read_jsonl::<SampleRecord>(input)?
    };
    if records.len() != meta.questions {
        anyhow::bail!(
            "{} holds {} questions, but {} says {}",
            input.display(),
            records.len(),
            meta_path(input).display(),
            meta.questions
        );
    }
    let mut indexed = Vec::with_capacity(records.len());
    for (line, r) in records {
        r.validate(input, line)?;
        let index = r.index.ok_or_else(|| {
            InputError::field(
                input,
                line,
                "index",
                "missing: only files written by east sample can be merged",
            )
        })?;
        indexed.push((index, r));
    }
    Ok(indexed)
}

/// Refuses a merge that lacks one of the run's shards.
fn check_every_shard(meta: &SampleMeta, given: &BTreeMap<usize, &PathBuf>) -> anyhow::Result<()> {
    let count = meta.shard.map_or(1, |s| s.count);
    let missing: Vec<String> = (0..count)
        .filter(|i| !given.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "shard {} missing: the run has {count} shards and {} were given; east merge needs every shard once",
            missing.join(", "),
            given.len()
        );
    }
    Ok(())
}

/// The records sorted by question index, which must run 0.. without a gap or a repeat, up to
/// the run's `total` questions.
fn in_question_order(
    mut all: Vec<(usize, SampleRecord)>,
    total: Option<usize>,
) -> anyhow::Result<Vec<SampleRecord>> {
    all.sort_by_key(|(i, _)| *i);
    let mut seen = HashSet::new();
    for (i, r) in &all {
        if !seen.insert(*i) {
            anyhow::bail!(
                "question `{}` (index {i}) appears in more than one input",
                r.id
            );
        }
    }
    if let Some(gap) = (0..all.len()).find(|&k| all[k].0 != k) {
        anyhow::bail!("question index {gap} is missing from the inputs: is a shard left out?");
    }
    if let Some(total) = total.filter(|&t| t != all.len()) {
        anyhow::bail!(
            "the shards hold {} questions of the run's {total}: question index {} is missing",
            all.len(),
            all.len()
        );
    }
    Ok(all.into_iter().map(|(_, r)| r).collect())
}
