"""The PyTorch anchor of `bench/trainer_throughput.py --anchor`: Hugging Face BERT doing the
same training step as Berth's, run from its own virtualenv (bench/requirements-anchor.txt),
one configuration per process; prints one JSON line like the Berth side.

Same work as Berth's step: `BertForMaskedLM` (BERT-base or tiny, vocabulary 30522, dropout
0.1, the library's default attention, i.e. SDPA), loss = cross-entropy of `model.cls` applied
to the hidden states at the masked positions only, averaged over the masked positions of each
sequence and then over the batch; AdamW with decoupled weight decay 0.01 except biases and
LayerNorm, global-norm clipping at 1.0 and the warm-up/linear-decay schedule — what the
`transformers` Trainer does by default (its fused AdamW where torch has one for the device,
`max_grad_norm=1.0`). `mixed_bfloat16` is the Trainer's `bf16=True`: `torch.autocast` with
bfloat16 around the forward pass and the loss, float32 weights and optimizer state.

    <anchor venv>/bin/python bench/anchor_hf.py --one base,8,mixed_bfloat16
"""

from __future__ import annotations

import argparse
import json
import os

import trainer_throughput as tt  # stdlib only at import: no TensorFlow in the anchor's venv

#: layers, hidden size, heads, intermediate size
SIZES = {"tiny": (2, 128, 2, 512), "base": (12, 768, 12, 3072)}
VOCAB, PREDICTIONS = tt.VOCAB, tt.PREDICTIONS


def matmul_ceiling(dtype) -> float:
    """GFLOP/s of a large square `torch.matmul` (the Berth side times `tf.matmul`)."""
    import torch

    a = torch.randn(tt.CEILING_N, tt.CEILING_N).to(dtype)
    return tt.sustained_gflops(lambda: a @ a)


def build(model: str, batch: int, seq: int, precision: str):
    """The anchor's network, optimizer and step on one random batch; a namespace with
    `loss()` (forward), `backward()`, `update()` (clip + AdamW + schedule) and `step()`."""
    import types

    import torch
    import transformers

    threads = os.environ.get("BERTH_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    layers, hidden, heads, ff = SIZES[model]
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ff,
        max_position_embeddings=512,
    )
    net = transformers.BertForMaskedLM(config)
    net.train()
    decay = [
        p for n, p in net.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n
    ]
    no_decay = [p for n, p in net.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=1e-4, eps=1e-6, fused=True)
        fused = True
    except (RuntimeError, ValueError):
        opt = torch.optim.AdamW(groups, lr=1e-4, eps=1e-6)
        fused = False
    total = 1000
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))

    g = torch.Generator().manual_seed(0)
    token_ids = torch.randint(5, VOCAB, (batch, seq), generator=g)
    segment_ids = torch.zeros(batch, seq, dtype=torch.long)
    padding_mask = torch.ones(batch, seq, dtype=torch.long)
    positions = torch.randint(1, seq, (batch, PREDICTIONS), generator=g)
    mask_ids = torch.randint(5, VOCAB, (batch, PREDICTIONS), generator=g)
    mask_weights = torch.ones(batch, PREDICTIONS)
    autocast = precision == "mixed_bfloat16"

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            hidden_states = net.bert(
                input_ids=token_ids, token_type_ids=segment_ids, attention_mask=padding_mask
            ).last_hidden_state
            picked = torch.gather(hidden_states, 1, positions.unsqueeze(-1).expand(-1, -1, hidden))
            logits = net.cls(picked).float()
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, VOCAB), mask_ids.reshape(-1), reduction="none"
            ).reshape(batch, PREDICTIONS)
            return ((ce * mask_weights).sum(-1) / mask_weights.sum(-1).clamp(min=1)).mean()

    def backward():
        loss().backward()

    def update():
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()

    def step() -> float:
        value = loss()
        value.backward()
        update()
        opt.zero_grad(set_to_none=True)
        return value.detach().item()

    return types.SimpleNamespace(
        loss=loss,
        backward=backward,
        update=update,
        zero_grad=lambda: opt.zero_grad(set_to_none=True),
        step=step,
        fused_adamw=fused,
    )


def run_one(model: str, batch: int, seq: int, precision: str, steps: int, warmup: int) -> dict:
    load = os.getloadavg()[0]
    import torch
    import transformers

    b = build(model, batch, seq, precision)
    seconds = tt.time_steps(b.step, steps, warmup)
    return tt.result(
        model,
        batch,
        seq,
        precision,
        seconds,
        ceiling_gflops=round(matmul_ceiling(torch.float32), 1),
        bf16_ceiling_gflops=round(matmul_ceiling(torch.bfloat16), 1),
        load1=round(load, 2),
        threads=torch.get_num_threads(),
        fused_adamw=b.fused_adamw,
        versions=f"torch {torch.__version__.split('+')[0]}, "
        f"transformers {transformers.__version__}",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--one", required=True, help="model,batch,precision")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    model, batch, precision = args.one.split(",")
    print(json.dumps(run_one(model, int(batch), args.seq, precision, args.steps, args.warmup)))


if __name__ == "__main__":
    main()
