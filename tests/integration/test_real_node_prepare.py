"""data.prepare on the real node: the Indexed Job writes the shards, then the training reads them.

The operator runs as a local process; the prepare pods and the workers run the built trainer
image as real containers on the real node, with the quickstart corpus on a claimed volume
(`RealNode.claimed_corpus`). Two prepare pods each write their slice's shard and marker into
`data.prepare.output` on that volume; once the Job is Complete the operator creates the two
workers, which train a few steps from those shards and export the model.

The training also asks for a TensorBoard (`spec.tensorboard`), which a person then looks at:
`kubectl berth tensorboard prep --port P` (the plugin, run by the real kubectl) waits for its pod
and port-forwards to it, and headless Chromium opens the time-series dashboard, which must draw
the `train/loss` curve the workers wrote to the volume; the screenshot is kept in the test's tmp
dir (`tensorboard.png`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from berth_operator.local.runner import free_port
from tests.integration.conftest import DATA_CLAIM as CLAIM
from tests.integration.conftest import Operator, Trainings
from tests.support.chromium import Page, chromium_page
from tests.support.realnode import RealNode
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STEPS = 20
#: The loss the trainer writes every logEverySteps (berth_trainer.observability.Reporter.step):
#: tests.support.tiny logs every 5 steps, so the curve has STEPS // 5 points.
LOSS_TAG, POINTS = "train/loss", STEPS // 5
#: The scalar cards TensorBoard's time-series dashboard has drawn: their tag, the most points of
#: one of their lines (the SVG paths of its runs, raw and smoothed) and their text (title, axes,
#: and the data table's row of the last step).
CARDS = """Array.from(document.querySelectorAll('scalar-card-component')).map(card => ({
  tag: card.querySelector('tb-truncated-path')?.getAttribute('title'),
  points: Math.max(0, ...Array.from(card.querySelectorAll('line-chart .series-view path'),
                                    line => (line.getAttribute('d') || '').split('L').length)),
  text: card.innerText}))"""


def drawn_card(page: Page, tag: str, points: int, last_step: int) -> dict[str, Any] | None:
    """The dashboard's card of `tag` once its chart draws a line of at least `points` points
    and its data table shows the step of the last one, `last_step`."""
    for card in page.evaluate(CARDS) or ():
        row = str(card["text"]).split("Relative", 1)[-1].split()
        if card["tag"] == tag and card["points"] >= points and str(last_step) in row:
            return dict(card)
    return None


def test_prepare_job_writes_the_shards_and_the_training_trains_from_them(
    api: client.ApiClient,
    node: RealNode,
    namespace: str,
    volume: Path,
    operator: Operator,
    trainings: Trainings,
    tmp_path: Path,
) -> None:
    """`volume` before `operator`: its teardown comes after the operator deleted the training."""
    body = node.tiny_training("prep", STEPS, CLAIM, image=node.image("trainer"))
    body["spec"]["data"]["prepare"] = {"workers": 2, "output": "/data/prep/shards"}
    body["spec"]["tensorboard"] = {"enabled": True}
    trainings.create(body)
    preparing = trainings.wait_phase("prep", "Preparing", timeout=60)
    assert preparing["prepare"]["job"] == "prep-prepare"

    final = trainings.wait_finished("prep", timeout=600)
    assert final["phase"] == "Succeeded", final
    conditions = {c["type"]: c for c in final["conditions"]}
    assert conditions["Prepared"]["status"] == "True", conditions
    assert final["prepare"]["succeeded"] == 2 and final["prepare"]["summary"] == "2/2", final
    job = client.BatchV1Api(api).read_namespaced_job("prep-prepare", namespace)
    assert job.status.succeeded == 2
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions)

    # Every slice's shard and marker, complete (no temporary dot-name is left behind).
    shards = volume / "prep" / "shards"
    names = sorted(p.name for p in shards.iterdir())
    assert [n for n in names if n.startswith("slice-")] == [
        "slice-00000-of-00002.json",
        "slice-00001-of-00002.json",
    ], names
    assert [n for n in names if n.startswith("train-")] == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ], names
    assert not [n for n in names if n.startswith(".")], names
    for index in range(2):
        assert (shards / f"train-{index:05d}-of-00002.tfrecord").stat().st_size > 0
        marker = json.loads((shards / f"slice-{index:05d}-of-00002.json").read_text())
        assert marker, marker

    # The workers came after the Job and trained from its shards to the last step.
    metrics = json.loads((volume / "prep" / "model" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS, metrics
    events = {e.reason for e in trainings.events("prep")}
    assert {"CreatedPrepareJob", "Preparing", "Prepared", "CreatedWorkers"} <= events, events
    worker = client.CoreV1Api(api).read_namespaced_pod("prep-worker-0", namespace)
    started = worker.metadata.creation_timestamp
    done = max(c.last_transition_time for c in job.status.conditions if c.type == "Complete")
    assert started >= done.replace(microsecond=0), (started, done)

    # The curves stay viewable after Succeeded: TensorBoard reads them from the volume.
    port = free_port()
    plugin = subprocess.Popen(
        ["kubectl", "berth", "tensorboard", "prep", "--namespace", namespace, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # with its kubectl port-forward: killed together if need be
    )
    try:
        assert plugin.stdout is not None and plugin.stderr is not None
        said = plugin.stdout.readline()  # once its pod is ready and the forward listens
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", said)
        assert found and int(found.group(1)) == port, said + plugin.stderr.read()
        url = found.group(0)
        with urllib.request.urlopen(f"{url}data/plugin/scalars/tags", timeout=30) as reply:
            assert LOSS_TAG in json.loads(reply.read())["."]  # its data API (run "." is the dir)
        with chromium_page(tmp_path / "chromium") as page:
            # The loss card only (tagFilter), its lines as SVG paths (forceSVG: no WebGL here).
            query = f"forceSVG=true&tagFilter={LOSS_TAG.replace('/', '%2F')}"
            page.navigate(f"{url}?{query}#timeseries")
            card = wait_for(
                lambda: drawn_card(page, LOSS_TAG, POINTS, STEPS),
                timeout=60,
                what=f"the {LOSS_TAG} curve drawn up to step {STEPS}",
            )
            screenshot = page.screenshot(tmp_path / "tensorboard.png")
        plugin.send_signal(signal.SIGINT)  # Ctrl-C
        assert plugin.wait(timeout=15) == 0, plugin.stderr.read()
    finally:
        if plugin.poll() is None:
            os.killpg(plugin.pid, signal.SIGKILL)
            plugin.wait()
    assert card["tag"] == LOSS_TAG, card
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000, len(png)
