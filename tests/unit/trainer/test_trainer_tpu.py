"""TPU bits of the trainer on CPU: the XLA-compiled multi-step loop with static shapes and
bfloat16, gs:// validation for Cloud TPU VMs, guest-attribute reporting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import keras
import numpy as np
import pytest
import tensorflow as tf

from berth_trainer.config import TrainerConfig
from berth_trainer.errors import TrainerError
from berth_trainer.exit_codes import ExitCode
from berth_trainer.modeling import build_model
from berth_trainer.observability import Reporter
from berth_trainer.optim import build_optimizer
from berth_trainer.tpu import GuestAttributes, make_multi_step, use_bfloat16, validate_cloud_paths
from berth_trainer.train_step import STEP_OUTPUTS, make_train_step
from tests.unit.trainer.trainer_testlib import pretraining_config, task_of


@pytest.fixture
def bfloat16() -> Iterator[None]:
    use_bfloat16()
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_tpu_step_compiles_with_xla_static_shapes_and_bfloat16(tmp_path, corpus, bfloat16):
    cfg = TrainerConfig.model_validate(
        pretraining_config(corpus, tmp_path, globalBatchSize=8, jitCompile=True, warmupSteps=0)
    )
    task = task_of(cfg, prepare=True)
    ds = task.dataset(8, (0, 1))
    features, _ = next(iter(ds))
    # Static shapes everywhere: the batch dimension is known (drop_remainder), as XLA needs.
    assert all(t.shape.is_fully_defined() for t in ds.element_spec[0].values())
    assert features["token_ids"].shape == (8, cfg.training.sequence_length)
    keras.utils.set_random_seed(0)
    model = build_model(task)
    assert model.compute_dtype == "bfloat16" and model.variable_dtype == "float32"
    variables = task.trainable_variables(model)
    optimizer = build_optimizer(cfg.training)
    optimizer.build(variables)
    step = make_train_step(model, optimizer, tf.distribute.get_strategy(), cfg, task, variables)
    multi = make_multi_step(step, steps_per_execution=3, outputs=len(STEP_OUTPUTS))
    out = multi(iter(ds.repeat()), tf.constant(0.0)).numpy()
    assert np.isfinite(out).all() and int(optimizer.iterations) == 3
    assert out[STEP_OUTPUTS.index("count")] > 0


def test_cloud_tpu_needs_gs_paths(tmp_path, corpus):
    cfg = TrainerConfig.model_validate(pretraining_config(corpus, tmp_path))
    with pytest.raises(TrainerError) as error:
        validate_cloud_paths(cfg)
    assert error.value.code == ExitCode.CONFIG_INVALID
    assert "data.train, output.dir, vocabulary: must be gs:// paths" in str(error.value)
    remote = cfg.model_copy(
        update={
            "vocabulary": "gs://b/vocab.txt",
            "data": cfg.data.model_copy(update={"train": "gs://b/*.txt"}),
            "output": cfg.output.model_copy(update={"dir": "gs://b/out"}),
        }
    )
    validate_cloud_paths(remote)


def test_guest_attributes_are_put_to_the_metadata_server(monkeypatch):
    seen: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            assert self.headers["Metadata-Flavor"] == "Google"
            seen[self.path.rsplit("/", 1)[1]] = body
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/computeMetadata/v1/instance/berth"
        GuestAttributes(url).report(step=12, loss=2.5, examples_per_second=640.0)
        assert seen == {
            "state": "running",
            "step": "12",
            "loss": "2.5",
            "examples_per_second": "640",
        }
        # The training loop's reporter forwards each logged step and the last checkpoint.
        reporter = Reporter(40, 0, None, 0, guest=GuestAttributes(url))
        reporter.start(0)
        reporter.checkpoint(20)
        reporter.step(20, {"loss": 1.25, "accuracy": 0.5}, 8, log_now=True)
        reporter.step(21, {"loss": 9.0, "accuracy": 0.5}, 8, log_now=False)
        reporter.close()
    finally:
        server.shutdown()
        server.server_close()
    assert (seen["step"], seen["loss"], seen["last_checkpoint_step"]) == ("20", "1.25", "20")
    monkeypatch.setenv("BERTH_TPU_PROVIDER", "cloud")
    assert GuestAttributes.from_environment() is not None
    monkeypatch.setenv("BERTH_TPU_PROVIDER", "gke")
    assert GuestAttributes.from_environment() is None
    GuestAttributes("http://127.0.0.1:9/nowhere", timeout=0.2).report(1, 1.0, 1.0)  # no raise
