"""The metric logger: one step late, MFU and HFU from the device's peak, non-finite streaks, each
step once after a resume."""
import json

import jax
import jax.numpy as jnp
import pytest

from omni_jax.flops import Flops
from omni_jax.train.metric_logger import MetricLogger, peak_flops


def device_metrics(loss: float, finite: bool = True, nonfinite: int = 0) -> dict:
    return {
        "loss": jnp.float32(loss),
        "tokens": jnp.int32(10),
        "grad_norm": jnp.float32(2.0),
        "finite": jnp.bool_(finite),
        "nonfinite": jnp.int32(nonfinite),
        "learning_rate": jnp.float32(1e-3),
    }


@pytest.mark.parametrize("kind,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
                                       ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12),
                                       ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
                                       ("cpu", None)])
def test_peak_flops_by_device_kind(kind, peak):
    assert peak_flops(kind) == peak
    assert peak_flops(kind, configured=1e12) == 1e12


def test_metrics_are_written_one_step_late_with_mfu_and_streaks(tmp_path):
    """MFU from model FLOPs, HFU from hardware FLOPs, each line with its own step's (a batch of
    another bucket length has other FLOPs, recorded as the next step is dispatched)."""
    logger = MetricLogger(tmp_path, total_steps=5, start_step=0, peak=1e9, log_every=1, progress=False)
    lines = lambda: [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    short, long = Flops(model=4e9, hardware=5e9), Flops(model=8e9, hardware=1e10)
    logger.record(1, device_metrics(3.0), {"clips": 8, "tokens": 800}, short)
    assert lines() == []  # the device's step 1 is not waited for while step 2 is dispatched
    logger.record(2, device_metrics(float("nan"), finite=False, nonfinite=1), {"clips": 8, "tokens": 800}, long)
    (first,) = lines()
    assert first["step"] == 1 and first["loss"] == 3.0 and first["assistant_tokens"] == 10
    assert first["tokens_per_s"] == pytest.approx(800 / first["step_seconds"])
    device_seconds = first["step_seconds"] * jax.device_count()
    assert (first["model_flops_per_step"], first["hardware_flops_per_step"]) == (4e9, 5e9)
    assert first["mfu"] == pytest.approx(4e9 / (device_seconds * 1e9))
    assert first["hfu"] == pytest.approx(5e9 / (device_seconds * 1e9))
    logger.record(3, device_metrics(float("inf"), finite=False, nonfinite=2), {"clips": 8, "tokens": 800}, short)
    assert logger.nonfinite_streak == 1
    logger.record(4, device_metrics(2.0, nonfinite=2), {"clips": 8, "tokens": 800, "skipped_corrupt_video": 1}, short)
    assert logger.nonfinite_streak == 2  # steps 2 and 3 in a row
    logger.close()
    assert logger.nonfinite_streak == 0
    written = lines()
    assert [line["step"] for line in written] == [1, 2, 3, 4]
    assert [line["model_flops_per_step"] for line in written] == [4e9, 8e9, 4e9, 4e9]
    assert written[1]["hfu"] == pytest.approx(1e10 / (written[1]["step_seconds"] * jax.device_count() * 1e9))
    assert not written[1]["finite"] and written[2]["nonfinite"] == 2 and written[3]["skipped_corrupt_video"] == 1


def _run(workdir, steps, start_step: int, loss: float) -> None:
    logger = MetricLogger(workdir, total_steps=steps[-1], start_step=start_step, peak=None, log_every=1,
                          progress=False)
    for step in steps:
        logger.record(step, device_metrics(loss + step), {"clips": 1, "tokens": 1}, Flops(1.0, 1.0))
    logger.write_eval(steps[-1], {"dfew": {"uar": loss}})
    logger.close()


def test_a_resumed_run_holds_each_step_once(tmp_path):
    """Killed after step 5 with its last checkpoint at step 3, resumed from 3: metrics.jsonl,
    eval/metrics.jsonl and TensorBoard hold steps 1–7 once each, 4 and 5 as the rerun wrote them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "eval").mkdir()
    _run(tmp_path, [1, 2, 3, 4, 5], start_step=0, loss=0.0)
    with (tmp_path / "metrics.jsonl").open("a") as torn:
        torn.write('{"step": 6, "lo')  # a line cut short by the kill
    _run(tmp_path, [4, 5, 6, 7], start_step=3, loss=100.0)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6, 7]
    assert [line["loss"] for line in lines] == [1, 2, 3, 104, 105, 106, 107]
    assert [json.loads(line)["step"] for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()] == [7]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(s, float(v)) for s, v in
                                                                   zip(range(1, 8), [1, 2, 3, 104, 105, 106, 107])]
