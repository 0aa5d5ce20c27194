"""Where a training step's time goes, Berth beside the PyTorch anchor: the forward pass, forward
and backward, and the optimizer update (clipping, weight decay, AdamW) timed on their own, then
the whole step, each side in its own process, alternating; `--ops N` adds each framework's
profiler view of one step (TensorFlow's profiler trace grouped by op type and by part of the
step, torch.profiler's self CPU time), the N largest.

    .venv/bin/python bench/step_profile.py --precisions mixed_bfloat16 --ops 15

Same shapes, model and anchor as `bench/trainer_throughput.py --anchor` (whose virtualenv it
uses). Op times are summed over TensorFlow's two inter-op threads, so they add up to more than
the wall time; the timed parts are wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import trainer_throughput as tt

PARTS = ("forward", "forward+backward", "update", "step")


def timed(fn, steps: int) -> float:
    return tt.time_steps(fn, steps, warmup=1)


def tf_op_times(trace_dir: str, optimizer_scope: str, steps: int) -> dict:
    """Op time per step from a TensorFlow profiler trace: by op type, and by part of the step."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    (path,) = Path(trace_dir).rglob("*.xplane.pb")
    space.ParseFromString(path.read_bytes())
    (host,) = (p for p in space.planes if p.name == "/host:CPU")
    by_type: collections.Counter = collections.Counter()
    by_part: collections.Counter = collections.Counter()
    for line in host.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            if ":" not in name or "::" in name:  # executor and runtime events, not ops
                continue
            scope, op_type = name.rsplit(":", 1)
            seconds = event.duration_ps / 1e12 / steps
            by_type[op_type] += seconds
            part = (
                "backward"
                if scope.startswith("gradient_tape/")
                else "optimizer"
                if scope.startswith(optimizer_scope + "/")
                else "forward, loss, clipping"
            )
            by_part[part] += seconds
    return {"by_type": by_type.most_common(), "by_part": by_part.most_common()}


def berth_side(model: str, batch: int, precision: str, args: argparse.Namespace) -> dict:
    import tensorflow as tf

    from berth_trainer.runtime import release_free_memory

    b = tt.build_step(model, batch, args.seq, precision)

    @tf.function
    def forward():
        return tf.reduce_sum(tf.cast(b.model(b.features, training=True)["logits"], tf.float32))

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            outputs = b.model(b.features, training=True)
            loss = tf.reduce_mean(b.task.loss(outputs, b.labels)[0])
        grads = tape.gradient(loss, b.variables)
        return tf.add_n(
            [tf.reduce_sum(tf.cast(tf.convert_to_tensor(g), tf.float32)) for g in grads]
        )

    grads = [tf.random.stateless_normal(v.shape, [0, i]) * 1e-3 for i, v in enumerate(b.variables)]

    @tf.function
    def update():
        b.optimizer.apply_gradients(zip(grads, b.variables, strict=True))
        return tf.constant(0.0)

    b.run().numpy()
    release_free_memory()
    fns = {
        "forward": forward,
        "forward+backward": forward_backward,
        "update": update,
        "step": b.run,
    }
    out = {part: timed(lambda f=fns[part]: f().numpy(), args.steps) for part in PARTS}
    if args.ops:
        with tempfile.TemporaryDirectory() as trace:
            tf.profiler.experimental.start(trace)
            for _ in range(2):
                b.run().numpy()
            tf.profiler.experimental.stop()
            out["ops"] = tf_op_times(trace, b.optimizer.name, 2)
    return out


def anchor_side(model: str, batch: int, precision: str, args: argparse.Namespace) -> dict:
    import anchor_hf

    b = anchor_hf.build(model, batch, args.seq, precision)
    b.step()

    def forward_backward():
        b.backward()
        b.zero_grad()

    out = {
        "forward": timed(lambda: b.loss().detach(), args.steps),
        "forward+backward": timed(forward_backward, args.steps),
    }
    b.backward()  # gradients for the update alone
    out["update"] = timed(b.update, args.steps)
    out["step"] = timed(b.step, args.steps)
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                b.step()
        rows = [(e.key, e.self_cpu_time_total / 1e6 / 2) for e in prof.key_averages()]
        out["ops"] = {"by_type": sorted(rows, key=lambda r: -r[1])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["base"], choices=sorted(tt.SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--steps", type=int, default=5, help="timed calls per part")
    p.add_argument("--ops", type=int, default=0, help="print the N largest ops of each side")
    p.add_argument("--side", choices=["berth", "anchor"], help=argparse.SUPPRESS)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        model, batch, precision = args.one.split(",")
        side = berth_side if args.side == "berth" else anchor_side
        print(json.dumps(side(model, int(batch), precision, args)))
        return
    anchor_python = tt.anchor_python()
    for model in args.models:
        for precision in args.precisions:
            results = {}
            for side, python in (("berth", sys.executable), ("anchor", anchor_python)):
                cmd = [
                    python,
                    __file__,
                    "--side",
                    side,
                    "--one",
                    f"{model},{args.batch},{precision}",
                    "--seq",
                    str(args.seq),
                    "--steps",
                    str(args.steps),
                    "--ops",
                    str(args.ops),
                ]
                load = os.getloadavg()[0]
                results[side] = tt.run_json(cmd)
                if "error" in results[side]:
                    sys.exit(f"{side} failed: {results[side]['error']}")
                results[side]["load1"] = load
            berth, anchor = results["berth"], results["anchor"]
            print(
                f"\n{model} b{args.batch} s{args.seq} {precision} (load1 at start: "
                f"Berth {berth['load1']:.2f}, anchor {anchor['load1']:.2f})"
            )
            print(f"{'part':18} {'Berth s':>8} {'anchor s':>9} {'anchor/Berth':>12}")
            for part in PARTS:
                print(
                    f"{part:18} {berth[part]:>8.3f} {anchor[part]:>9.3f} "
                    f"{anchor[part] / berth[part]:>11.2f}x"
                )
            if args.ops:
                print(
                    "Berth op time per step by part: "
                    + ", ".join(f"{k} {v:.3f} s" for k, v in berth["ops"]["by_part"])
                )
                print(f"{'Berth op type':32} {'s/step':>7}   {'anchor op':40} {'s/step':>7}")
                for i in range(args.ops):
                    left = (
                        berth["ops"]["by_type"][i] if i < len(berth["ops"]["by_type"]) else ("", 0)
                    )
                    right = (
                        anchor["ops"]["by_type"][i]
                        if i < len(anchor["ops"]["by_type"])
                        else ("", 0)
                    )
                    print(
                        f"{left[0][:32]:32} {left[1]:>7.3f}   {right[0][:40]:40} {right[1]:>7.3f}"
                    )


if __name__ == "__main__":
    main()
