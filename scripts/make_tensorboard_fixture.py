#!/usr/bin/env python3
"""Writes fixtures/tensorboard/events.out.tfevents.1700000000.fixture with the `tensorboard`
Python package's own event writer and protobuf classes (the independent reference for
kiln-format's TensorBoard encoder, which must reproduce this file byte for byte), then reads
it back with TensorBoard's loader and prints the scalars.

    pip install tensorboard   # 2.21.0 wrote the committed file
    python3 scripts/make_tensorboard_fixture.py

The events (wall time, step, tag, value) are the ones kiln-format's test writes: a version
event at 1700000000.0, then scalars as PyTorch's SummaryWriter.add_scalar stores them
(Summary.Value.simple_value), including step 0, a value of 0 and a large step.
"""
import os
import struct
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.summary.writer.record_writer import RecordWriter

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "tensorboard" / "events.out.tfevents.1700000000.fixture"

EVENTS = [
    ("train/loss", 1, 1700000001.25, 0.6931472),
    ("train/lr", 1, 1700000001.25, 2e-5),
    ("train/loss", 0, 1700000002.5, 0.0),
    ("eval/accuracy", 300, 1700000003.0, 0.875),
    ("eval/mcc", 1234567, 1700000004.75, -0.125),
]


def main():
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "wb") as f:
        w = RecordWriter(f)
        w.write(event_pb2.Event(wall_time=1700000000.0, file_version="brain.Event:2").SerializeToString())
        for tag, step, wall_time, value in EVENTS:
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            w.write(event_pb2.Event(wall_time=wall_time, step=step, summary=summary).SerializeToString())
        w.flush()
    for e in EventFileLoader(str(OUT)).Load():
        for v in e.summary.value:
            # The loader migrates simple_value into a scalar tensor (TensorBoard's data compat).
            value = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
            print(e.wall_time, e.step, v.tag, value)
    print(f"{OUT}: {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
