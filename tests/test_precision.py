"""Precision chosen by timing the loaded model (vos.utils.precision), cached per CPU, torch version and model."""

import json

import pytest
import torch

from vos.utils import precision


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VOS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    return tmp_path / "precision.json"


def _timer(ms: dict):
    calls = []

    def timer(run, dtype):
        run(dtype)
        calls.append(dtype)
        return ms[dtype] / 1000

    return timer, calls


def test_the_faster_precision_is_chosen_and_cached(cache):
    cpu = torch.device("cpu")
    ran = []
    timer, calls = _timer({None: 60.0, torch.bfloat16: 75.0})  # bf16 slower, as on a Xeon without AMX
    dtype, why = precision.choose("auto", cpu, "model A", ran.append, timer=timer)
    assert dtype is None and "fp32" in why and "measured" in why
    assert len(calls) == 6 and calls.count(None) == 3 and len(ran) == 8  # 2 warm-up passes + 3 timed each
    stored = json.loads(cache.read_text())
    (key,) = stored
    assert precision.cpu_name() in key and torch.__version__ in key and "model A" in key
    assert stored[key] == {"choice": "fp32", "fp32_ms": 60.0, "bf16_ms": 75.0}

    def no_timer(run, dtype):
        raise AssertionError("measured again although the answer is cached")

    dtype, why = precision.choose("auto", cpu, "model A", ran.append, timer=no_timer)
    assert dtype is None and "cached" in why and len(ran) == 8  # the second time: no pass at all
    timer, _ = _timer({None: 90.0, torch.bfloat16: 70.0})  # another model: measured on its own
    dtype, why = precision.choose("auto", cpu, "model B", ran.append, timer=timer)
    assert dtype is torch.bfloat16 and "bf16" in why
    assert len(json.loads(cache.read_text())) == 2


def test_forced_settings_and_cpus_without_bf16(cache, monkeypatch):
    cpu = torch.device("cpu")

    def never(run, dtype):
        raise AssertionError("no measurement expected")

    assert precision.choose("true", cpu, "m", lambda d: None, timer=never)[0] is torch.bfloat16
    assert precision.choose("false", cpu, "m", lambda d: None, timer=never)[0] is None
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    dtype, why = precision.choose("auto", cpu, "m", lambda d: None, timer=never)
    assert dtype is None and "no native bf16" in why and not cache.exists()


def test_an_unwritable_cache_still_gives_an_answer(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("VOS_CACHE_DIR", str(tmp_path / "file" / "sub"))  # a path under a regular file
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    timer, _ = _timer({None: 1.0, torch.bfloat16: 2.0})
    assert precision.choose("auto", torch.device("cpu"), "m", lambda d: None, timer=timer)[0] is None
