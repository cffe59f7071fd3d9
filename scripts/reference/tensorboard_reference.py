#!/usr/bin/env python3
"""TensorBoard's own writer and reader against east's event files (tests/tensorboard.rs).

    python3 scripts/reference/tensorboard_reference.py writer
        TensorBoard's EventFileWriter writes a file of the events east writes (file_version,
        scalars, a histogram, a SessionLog.START), with the clock pinned; the file and the
        events' description go to tests/fixtures/tensorboard/. The Rust test builds the same
        events with east's writer and compares the bytes: framing, masked CRC-32C, protobuf.
        The histogram's buckets are counted here from the rule (30 equal-width buckets from
        min to max, bucket i holding (limit[i-1], limit[i]]), not by east's code.

    cargo test --test tensorboard dump_tensorboard_runs -- --ignored   # writes /tmp/east-tb
    python3 scripts/reference/tensorboard_reference.py check /tmp/east-tb
        TensorBoard's EventAccumulator (purging off, so a step logged twice would show) reads
        the event folders of a short DPO training and of one killed and resumed: for every
        number of train_log.jsonl, the series train/<key> has the log's steps, each once, and
        the log's values as 32-bit floats. Writes what it read, with the resumed run's event
        files, to tests/fixtures/tensorboard/ (the Rust test reads those files with east's
        reader and must get what EventAccumulator got).

Needs the `tensorboard` package (2.x; no TensorFlow).
"""
import bisect, json, os, shutil, struct, sys
from unittest import mock

import tensorboard
from google.protobuf import __version__ as protobuf_version
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, histogram_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "tests", "fixtures", "tensorboard")


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def histogram_of(values, buckets=30):
    """The rule east documents, counted with bisect; sums left to right."""
    lo, hi = min(values), max(values)
    n = buckets if hi > lo else 1
    width = (hi - lo) / n
    limits = [lo + i * width for i in range(1, n)] + [hi]
    counts = [0.0] * n
    for v in values:
        counts[bisect.bisect_left(limits, v)] += 1.0
    total, squares = 0.0, 0.0
    for v in values:
        total += v
        squares += v * v
    return histogram_pb2.HistogramProto(
        min=lo, max=hi, num=float(len(values)), sum=total, sum_squares=squares,
        bucket_limit=limits, bucket=counts)


def writer_fixture():
    os.makedirs(FIXTURES, exist_ok=True)
    start = 1767225600.125
    scalars = [("train/loss", 0.6931471805599453), ("train/lr", 2e-06),
               ("train/grad_norm", 13.75), ("train/rewards/margins", 0.0),
               ("train/tokens_per_s", 512.3)]
    entropies = [0.0, 0.6931471805599453, 1.0986122886681098, 2.772588722239781,
                 1.3862943611198906, 0.5623351446188083, 2.0794415416798357, 0.2]
    constant = [1.0, 1.0, 1.0]
    events = [
        {"wall_time": start + 1.5, "step": 1, "scalars": scalars},
        {"wall_time": start + 2.0, "step": 300, "scalars": [("train/loss", -1.25e-7)]},
        {"wall_time": start + 3.0, "step": 2, "histograms": [("round/entropy", entropies),
                                                            ("round/weight", constant)]},
        {"wall_time": start + 4.0, "step": 41, "session_start": True},
    ]
    out = os.path.join("/tmp", "east-tb-writer")
    shutil.rmtree(out, ignore_errors=True)
    with mock.patch("time.time", return_value=start):
        w = EventFileWriter(out)
    for e in events:
        if "scalars" in e:
            values = [summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in e["scalars"]]
            ev = event_pb2.Event(wall_time=e["wall_time"], step=e["step"],
                                 summary=summary_pb2.Summary(value=values))
        elif "histograms" in e:
            values = [summary_pb2.Summary.Value(tag=t, histo=histogram_of(v))
                      for t, v in e["histograms"]]
            ev = event_pb2.Event(wall_time=e["wall_time"], step=e["step"],
                                 summary=summary_pb2.Summary(value=values))
        else:
            ev = event_pb2.Event(wall_time=e["wall_time"], step=e["step"],
                                 session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
        w.add_event(ev)
    w.close()
    (name,) = os.listdir(out)
    shutil.copy(os.path.join(out, name), os.path.join(FIXTURES, "tensorboard_writer.tfevents"))
    desc = {
        "generator": "scripts/reference/tensorboard_reference.py writer",
        "tensorboard": tensorboard.__version__,
        "protobuf": protobuf_version,
        "file_version": {"wall_time": start, "version": "brain.Event:2",
                         "writer": "tensorboard.summary.writer.event_file_writer"},
        "events": events,
    }
    with open(os.path.join(FIXTURES, "tensorboard_writer.json"), "w") as f:
        json.dump(desc, f, indent=1)
    print("wrote", os.path.join(FIXTURES, "tensorboard_writer.tfevents"))


def read_run(run_dir):
    """What EventAccumulator reads from run_dir/tensorboard, against train_log.jsonl."""
    log = [json.loads(l) for l in open(os.path.join(run_dir, "train_log.jsonl"))]
    acc = event_accumulator.EventAccumulator(
        os.path.join(run_dir, "tensorboard"), purge_orphaned_data=False,
        size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = sorted(acc.Tags()["scalars"])
    series = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}
    want_tags = sorted({"train/" + k for line in log for k, v in line.items()
                        if k != "step" and isinstance(v, (int, float))})
    assert tags == want_tags, (tags, want_tags)
    for tag in tags:
        key = tag[len("train/"):]
        want = [(line["step"], f32(line[key])) for line in log if line.get(key) is not None]
        got = series[tag]
        steps = [s for s, _ in got]
        assert len(steps) == len(set(steps)), f"{run_dir}: {tag} logs a step twice: {steps}"
        assert got == want, f"{run_dir}: {tag}: {got} != {want}"
    return {"steps": [line["step"] for line in log], "series": series}


def check(root):
    os.makedirs(FIXTURES, exist_ok=True)
    straight = read_run(os.path.join(root, "straight"))
    resumed = read_run(os.path.join(root, "resumed"))
    with open(os.path.join(root, "resumed", "resumed_at.txt")) as f:
        resumed_at = int(f.read())
    assert straight["steps"] == resumed["steps"]
    files = sorted(os.listdir(os.path.join(root, "resumed", "tensorboard")))
    assert len(files) == 2, files
    for name in files:
        shutil.copy(os.path.join(root, "resumed", "tensorboard", name),
                    os.path.join(FIXTURES, "resumed_" + str(files.index(name)) + ".tfevents"))
    out = {
        "generator": "scripts/reference/tensorboard_reference.py check",
        "tensorboard": tensorboard.__version__,
        "checked": "EventAccumulator(purge_orphaned_data=False) series == train_log.jsonl "
                   "(float32), each step once, for a straight and a killed+resumed DPO run",
        "resumed_at": resumed_at,
        "series": resumed["series"],
    }
    with open(os.path.join(FIXTURES, "accumulator_reference.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"EventAccumulator: {len(resumed['series'])} tags x {len(resumed['steps'])} steps, "
          f"each step once, equal to train_log.jsonl (straight and resumed at {resumed_at})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["writer"]:
        writer_fixture()
    elif sys.argv[1:2] == ["check"] and len(sys.argv) == 3:
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
