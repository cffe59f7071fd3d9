#!/usr/bin/env python3
"""W&B reads east's TensorBoard event files live (README, "Dashboards: TensorBoard and W&B").

wandb 0.30 dropped `wandb sync --sync-tensorboard`; what is left is its TensorBoard watcher: a
run started with `wandb.tensorboard.patch(root_logdir=DIR)` watches DIR once a TensorBoard
writer opens there, and streams the event files written into it afterwards (east's included).
This script is that watcher, in offline mode, and a reader of the offline run's history.

    python3 -m venv /tmp/wbvenv && /tmp/wbvenv/bin/pip install wandb tensorboard
    mkdir -p /tmp/wb/run/tensorboard
    /tmp/wbvenv/bin/python scripts/reference/wandb_reference.py watch /tmp/wb/run/tensorboard /tmp/wb/wandb &
    sleep 15   # until the watcher runs
    east train --model M --data D --out /tmp/wb/run --report-to tensorboard …
    touch /tmp/wb/wandb/done
    /tmp/wbvenv/bin/python scripts/reference/wandb_reference.py check /tmp/wb/wandb /tmp/wb/run

`check` asserts that the run's history has one row per line of train_log.jsonl, with
`global_step` = the line's step and `train/loss` = its loss as a 32-bit float.
"""
import glob, json, os, struct, sys, time


def watch(logdir, wandb_dir):
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    import wandb
    wandb.tensorboard.patch(root_logdir=logdir)
    run = wandb.init(project="east", dir=wandb_dir)
    # imported after the patch, so that this writer tells W&B which folder to watch
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    EventFileWriter(logdir).close()
    while not os.path.exists(os.path.join(wandb_dir, "done")):
        time.sleep(1)
    time.sleep(5)  # the watcher polls the folder every few seconds
    run.finish()


def records(path):
    """The records of a .wandb file: a 7-byte header, then LevelDB log blocks of 32 KiB."""
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            parts = chunk
        elif kind == 3:  # middle
            parts += chunk
        elif kind == 4:  # last
            yield parts + chunk


def check(wandb_dir, run_dir):
    from wandb.proto import wandb_internal_pb2 as pb
    (path,) = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb"))
    rows = []
    for raw in records(path):
        r = pb.Record()
        r.ParseFromString(raw)
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in r.history.item})
    log = [json.loads(l) for l in open(os.path.join(run_dir, "train_log.jsonl"))]
    f32 = lambda x: struct.unpack("<f", struct.pack("<f", x))[0]
    assert len(rows) == len(log), (len(rows), len(log))
    for row, line in zip(rows, log):
        assert row["global_step"] == line["step"], (row, line)
        assert f32(row["train/loss"]) == f32(line["loss"]), (row, line)
    print(f"W&B history: {len(rows)} rows, global_step and train/loss equal to train_log.jsonl")


if __name__ == "__main__":
    if sys.argv[1:2] == ["watch"] and len(sys.argv) == 4:
        watch(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["check"] and len(sys.argv) == 4:
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
