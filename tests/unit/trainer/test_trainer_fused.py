"""The step's fused kernels compute what Keras computes: the fused GELU and FusedAdamW."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from berth_trainer.activations import fused_gelu, keras_gelu
from berth_trainer.optim import NO_DECAY_NAMES, FusedAdamW, WarmupLinearDecay


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 2e-5), ("bfloat16", 2**-6)])
def test_fused_gelu_matches_keras_gelu_and_its_gradient(dtype, tol):
    x = tf.cast(tf.linspace(-6.0, 6.0, 4001), dtype)
    dy = tf.cast(tf.random.stateless_normal([4001], seed=[1, 2]), dtype)

    def value_and_grad(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x, output_gradients=dy)

    y, g = value_and_grad(fused_gelu)
    y_ref, g_ref = value_and_grad(keras_gelu)
    assert y.dtype == g.dtype == x.dtype
    # The output equals Keras' to float rounding (bfloat16: one unit in the last place).
    np.testing.assert_allclose(
        tf.cast(y, tf.float32), tf.cast(y_ref, tf.float32), rtol=tol, atol=tol
    )
    # The gradient is the exact derivative (a float64 central difference), computed in float32
    # and rounded once; Keras' own bfloat16 gradient is further off, so compare with float64.
    x64 = tf.cast(x, tf.float64)
    c, a = np.sqrt(2 / np.pi), 0.044715

    def gelu64(v):
        return 0.5 * v * (1 + tf.tanh(c * (v + a * v**3)))

    exact = (gelu64(x64 + 1e-6) - gelu64(x64 - 1e-6)) / 2e-6 * tf.cast(dy, tf.float64)
    np.testing.assert_allclose(tf.cast(g, tf.float64), exact, rtol=tol, atol=1e-5)
    if dtype == "float32":
        np.testing.assert_allclose(g, g_ref, atol=tol)
    # Dense layers serialise it by its registered name.
    config = keras.activations.serialize(fused_gelu)
    assert config["config"] == "berth>fused_gelu"
    assert keras.activations.deserialize(config) is fused_gelu


def _variables() -> list[keras.Variable]:
    rng = np.random.default_rng(0)
    shapes = {"kernel": (16, 8), "bias": (8,), "gamma": (8,), "embeddings": (30, 8)}
    return [keras.Variable(rng.normal(size=s).astype("float32"), name=n) for n, s in shapes.items()]


def _train(optimizer_class, grads_per_step, jit_compile: bool = False, **kwargs):
    variables = _variables()
    opt = optimizer_class(
        learning_rate=WarmupLinearDecay(1e-2, 2, 10), weight_decay=0.1, epsilon=1e-6, **kwargs
    )
    opt.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    opt.build(variables)

    @tf.function(jit_compile=jit_compile)
    def apply(grads):
        opt.apply_gradients(zip(grads, variables, strict=True))

    for grads in grads_per_step:
        apply(grads)
    return variables, opt


def _gradients(steps: int, scale: float) -> list[list]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(steps):
        shapes = ((16, 8), (8,), (8,))
        kernel, bias, gamma = (rng.normal(size=s).astype("float32") * scale for s in shapes)
        # The embedding's gradient of a gather: IndexedSlices.
        rows = tf.IndexedSlices(
            tf.constant(rng.normal(size=(3, 8)).astype("float32") * scale),
            tf.constant([4, 7, 2]),
            tf.constant([30, 8]),
        )
        out.append([tf.constant(kernel), tf.constant(bias), tf.constant(gamma), rows])
    return out


@pytest.mark.parametrize("clip", [None, 0.5], ids=["no-clip", "clipped"])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_fused_adamw_updates_like_keras_adamw(clip, jit_compile):
    grads = _gradients(steps=5, scale=3.0)
    kwargs = {"global_clipnorm": clip} if clip else {}
    ours, opt = _train(FusedAdamW, grads, jit_compile=jit_compile, **kwargs)
    theirs, ref = _train(keras.optimizers.AdamW, grads, **kwargs)
    assert int(opt.iterations) == 5
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)
    # iterations, m, v. The kernel's `1 - β2` is float32(1) - float32(0.999), Keras' the
    # float32 of the Python float 1 - 0.999: 1.3e-5 apart.
    for a, b in zip(opt.variables, ref.variables, strict=True):
        assert a.path.split("/", 1)[1] == b.path.split("/", 1)[1]
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=1e-9, err_msg=a.path)
    # The variables really moved, and decay skipped the excluded ones (else this is vacuous).
    start = _variables()
    assert all(not np.allclose(a.numpy(), s.numpy()) for a, s in zip(ours, start, strict=True))


def test_fused_adamw_sums_repeated_rows_of_a_sparse_gradient_first():
    # A gather's gradient repeats a row once per lookup: Adam sees their sum, as for the dense
    # gradient (tf.keras' Adam and PyTorch do the same; Keras 3's AdamW squares each repeat).
    rows = np.random.default_rng(2).normal(size=(2, 8)).astype("float32")
    dense = np.zeros((30, 8), "float32")
    dense[4] = rows.sum(0)
    zeros = [tf.zeros((16, 8)), tf.zeros((8,)), tf.zeros((8,))]
    sparse = tf.IndexedSlices(tf.constant(rows), tf.constant([4, 4]), tf.constant([30, 8]))
    a, _ = _train(FusedAdamW, [[*zeros, sparse]] * 3)
    b, _ = _train(FusedAdamW, [[*zeros, tf.constant(dense)]] * 3)
    np.testing.assert_allclose(a[-1].numpy(), b[-1].numpy(), rtol=1e-6)
    assert not np.allclose(a[-1].numpy()[4], _variables()[-1].numpy()[4])


def test_fused_adamw_config_and_checkpoints_are_adamw_s(tmp_path):
    grads = _gradients(steps=3, scale=1.0)
    ours, opt = _train(FusedAdamW, grads)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is FusedAdamW

    def config(o):
        c = {k: v for k, v in o.get_config().items() if k != "name"}
        return {**c, "learning_rate": keras.optimizers.schedules.serialize(c["learning_rate"])}

    plain = keras.optimizers.AdamW.from_config(opt.get_config())
    assert config(again) == config(opt) == config(plain)
    # A checkpoint of FusedAdamW restores into Keras' AdamW (and back): the same slots.
    path = tf.train.Checkpoint(optimizer=opt, model=ours).write(str(tmp_path / "ckpt"))
    theirs, ref = _train(keras.optimizers.AdamW, [])
    tf.train.Checkpoint(optimizer=ref, model=theirs).read(path).assert_consumed()
    for a, b in zip(opt.variables, ref.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
