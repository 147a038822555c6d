"""GPU health of the model server: nvidia-smi parsing, limits, and the real server process on CPU (no GPU here)
with the drill fault hook turning /readyz 503 and back."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from drtool.model.demo import write_demo_weights

from .conftest import REPO
from .test_model_server import VERSION, Server, write_manifest

_spec = importlib.util.spec_from_file_location("gpu_health", REPO / "images" / "model-server" / "gpu_health.py")
gpu_health = importlib.util.module_from_spec(_spec)
sys.modules["gpu_health"] = gpu_health
_spec.loader.exec_module(gpu_health)

MIB = 1 << 20
# Real output shapes of `nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu,temperature.gpu
# --format=csv,noheader,nounits`: an A100 and a T4, and a board that does not report utilization.
SMI_SAMPLE = """0, 30712, 40960, 87, 71
1, 0, 15360, 0, 34
2, 512, 24576, [N/A], 45
"""


def test_parse_nvidia_smi_sample():
    devices = gpu_health.parse_nvidia_smi(SMI_SAMPLE)
    assert [d.index for d in devices] == [0, 1, 2]
    a100 = devices[0]
    assert (a100.memory_used_bytes, a100.memory_total_bytes) == (30712 * MIB, 40960 * MIB)
    assert a100.utilization_ratio == pytest.approx(0.87) and a100.temperature_c == 71
    assert a100.memory_used_pct == pytest.approx(74.98, abs=0.01)
    assert devices[1].memory_used_bytes == 0 and devices[1].memory_used_pct == 0
    assert devices[2].utilization_ratio is None and devices[2].temperature_c == 45
    assert gpu_health.parse_nvidia_smi("") == [] and gpu_health.parse_nvidia_smi("\n\n") == []
    assert gpu_health.parse_nvidia_smi("0, [Not Supported], [Not Supported], 3, 50")[0].memory_used_pct is None


@pytest.mark.parametrize("text", [
    "index, memory.used [MiB], memory.total [MiB], utilization.gpu [%], temperature.gpu",  # with a header
    "0, 100, 200, 5",  # a column short
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
])
def test_parse_nvidia_smi_refuses_other_shapes(text):
    with pytest.raises(ValueError, match="nvidia-smi line 1"):
        gpu_health.parse_nvidia_smi(text)


def test_read_nvidia_smi_runs_the_query(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\nprintf '%s' '{SMI_SAMPLE}'\n")
    fake.chmod(0o755)
    assert len(gpu_health.read_nvidia_smi(str(fake))) == 3
    assert (tmp_path / "args").read_text().split() == gpu_health.NVIDIA_SMI_QUERY
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="exited 9: NVIDIA-SMI has failed"):
        gpu_health.read_nvidia_smi(str(broken))


def test_limit_violations_wording():
    devices = gpu_health.parse_nvidia_smi("0, 39000, 40000, 99, 91\n1, 10, 40000, 1, 40")
    reading = gpu_health.Reading("nvidia-smi", devices)
    limits = gpu_health.Limits(memory_pct=95, temperature_c=85)
    assert gpu_health.limit_violations(reading, limits) == [
        "gpu 0 memory 97.5 % used above limit 95 %", "gpu 0 temperature 91 °C above limit 85 °C"]
    assert gpu_health.limit_violations(reading, gpu_health.Limits()) == []
    assert gpu_health.limit_violations(gpu_health.Reading("none"), limits) == []
    assert gpu_health.Limits.from_env({}) == gpu_health.Limits(None, None)
    assert gpu_health.Limits.from_env({"GPU_MEMORY_LIMIT_PCT": "90", "GPU_TEMPERATURE_LIMIT_C": ""}).memory_pct == 90
    for bad in ({"GPU_MEMORY_LIMIT_PCT": "lots"}, {"GPU_MEMORY_LIMIT_PCT": "120"}, {"GPU_TEMPERATURE_LIMIT_C": "0"}):
        with pytest.raises(ValueError, match="GPU_"):
            gpu_health.Limits.from_env(bad)


def _fake_torch(cuda: bool, free_total=(0, 0)):
    return SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: cuda, device_count=lambda: 1,
                                                mem_get_info=lambda i: free_total))


def test_monitor_sources(tmp_path):
    none = gpu_health.GpuMonitor(_fake_torch(False), {})
    none.pynvml, none.smi = None, None
    assert (none.read().source, none.read().present, none.read().devices) == ("none", False, [])

    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '%s' '{SMI_SAMPLE}'\n")
    fake.chmod(0o755)
    smi_only = gpu_health.GpuMonitor(_fake_torch(False), {})
    smi_only.pynvml, smi_only.smi = None, str(fake)
    assert smi_only.read().source == "nvidia-smi" and len(smi_only.read().devices) == 3

    # torch sees one GPU (physical GPU 1 through CUDA_VISIBLE_DEVICES): memory from torch, the rest from nvidia-smi.
    both = gpu_health.GpuMonitor(_fake_torch(True, (4 * MIB, 16 * MIB)), {"CUDA_VISIBLE_DEVICES": "1"})
    both.pynvml, both.smi = None, str(fake)
    r = both.read()
    assert r.source == "torch+nvidia-smi"
    (d,) = r.devices
    assert (d.index, d.memory_used_bytes, d.memory_total_bytes, d.temperature_c) == (0, 12 * MIB, 16 * MIB, 34)

    errors = []
    failing = gpu_health.GpuMonitor(_fake_torch(False), {}, on_error=errors.append)
    failing.pynvml, failing.smi, failing.poll_seconds = None, "/nonexistent/nvidia-smi", 0
    assert failing.read().source == "none" and failing.read().source == "none"
    assert len(errors) == 1 and errors[0].startswith("nvidia-smi: FileNotFoundError"), "each failure logged once"


def test_fault_hook_file(tmp_path):
    hook = tmp_path / "gpu-fault.json"
    mon = gpu_health.GpuMonitor(_fake_torch(False), {"GPU_FAULT_FILE": str(hook)})
    mon.pynvml, mon.smi = None, None
    assert mon.read().source == "none", "no file: the real reading"
    hook.write_text(json.dumps({"device": 0, "temperature_c": 95, "memory_used_pct": 97}))
    r = mon.read()
    assert (r.source, r.simulated, r.present) == ("fault-hook", True, True)
    assert r.devices[0].temperature_c == 95 and r.devices[0].memory_used_pct == pytest.approx(97)
    assert gpu_health.limit_violations(r, gpu_health.Limits(temperature_c=85)) == [
        "gpu 0 temperature 95 °C above limit 85 °C (simulated by the GPU fault hook)"]
    hook.write_text('{"device": 0, "temprature_c": 95}')
    assert mon.read().source == "none", "a malformed hook is ignored (and logged), not guessed at"
    off = gpu_health.GpuMonitor(_fake_torch(False), {})
    off.pynvml, off.smi = None, None
    assert off.fault_file is None and off.read().source == "none"


# -- the real server, on CPU ------------------------------------------------------------------------------------
def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu-weights")
    write_demo_weights(d / "w", size_mb=4, seed=3, version=VERSION)
    write_manifest(d / "w", d / "manifest.json")
    return d


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only reading")
def test_server_without_gpu_says_so(served):
    server = Server(served / "w", served / "manifest.json")
    try:
        server.wait_ready()
        gpu = server.wait_event("gpu")
        assert (gpu["source"], gpu["present"], gpu["simulated"], gpu["fault_hook"]) == ("none", False, False, None)
        s = samples(server.get("/metrics").text)
        assert s[("drtool_model_server_gpu_present", ())] == 0
        assert s[("drtool_model_server_gpu_info", (("simulated", "0"), ("source", "none")))] == 1
        assert not [k for k in s if k[0].startswith("drtool_model_server_gpu_") and ("device", "0") in k[1]], \
            "no GPU: no per-device series, not zeros"
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only reading")
def test_fault_hook_turns_readiness_503_and_back(served, tmp_path):
    hook = tmp_path / "gpu-fault.json"
    server = Server(served / "w", served / "manifest.json", GPU_FAULT_FILE=str(hook),
                    GPU_TEMPERATURE_LIMIT_C="85", GPU_MEMORY_LIMIT_PCT="90")
    try:
        server.wait_ready()
        assert server.wait_event("gpu")["fault_hook"] == str(hook)
        hook.write_text(json.dumps({"device": 0, "temperature_c": 95, "memory_used_pct": 80}))
        r = server.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["state"] == "degraded" and body["ready"] is False
        assert body["reason"] == "gpu 0 temperature 95 °C above limit 85 °C (simulated by the GPU fault hook)"
        assert server.get("/healthz").status_code == 200
        s = samples(server.get("/metrics").text)
        assert s[("drtool_model_server_gpu_present", ())] == 1
        assert s[("drtool_model_server_gpu_info", (("simulated", "1"), ("source", "fault-hook")))] == 1
        assert s[("drtool_model_server_gpu_temperature_celsius", (("device", "0"),))] == 95
        used = s[("drtool_model_server_gpu_memory_used_bytes", (("device", "0"),))]
        assert used / s[("drtool_model_server_gpu_memory_total_bytes", (("device", "0"),))] == pytest.approx(0.8)
        assert ("drtool_model_server_gpu_info", (("simulated", "0"), ("source", "none"))) not in s

        hook.write_text(json.dumps({"device": 0, "temperature_c": 70, "memory_used_pct": 97}))
        r = server.get("/readyz")
        assert r.status_code == 503 and r.json()["reason"].startswith("gpu 0 memory 97 % used above limit 90 %")

        hook.unlink()
        r = server.get("/readyz")
        assert r.status_code == 200 and r.json()["state"] == "ready", r.text
        s = samples(server.get("/metrics").text)
        assert s[("drtool_model_server_gpu_present", ())] == 0
        assert ("drtool_model_server_gpu_temperature_celsius", (("device", "0"),)) not in s
        degraded = server.find("gpu_degraded")
        assert [e["reasons"][0][:20] for e in degraded] == ["gpu 0 temperature 95", "gpu 0 memory 97 % us"]
        assert len(server.find("gpu_recovered")) == 1
    finally:
        assert server.stop() == 0


def test_bad_gpu_limit_is_refused(served):
    env_server = [sys.executable, str(REPO / "images" / "model-server" / "server.py")]
    proc = subprocess.run(env_server, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MODEL_DIR": str(served / "w"),
                               "PORT": "0", "HOST": "127.0.0.1", "GPU_TEMPERATURE_LIMIT_C": "hot"})
    assert proc.returncode == 2
    (line,) = [json.loads(x) for x in proc.stderr.splitlines() if '"bad_settings"' in x]
    assert "GPU_TEMPERATURE_LIMIT_C must be a number" in line["error"]


def test_gpu_poll_seconds_caches_the_hardware_reading():
    calls = []
    mon = gpu_health.GpuMonitor(_fake_torch(False), {}, poll_seconds=60)
    mon.pynvml, mon.smi = None, None
    mon._read_hardware = lambda: calls.append(1) or gpu_health.Reading("none")
    mon.read(), mon.read()
    assert len(calls) == 1
    mon.poll_seconds = 0
    time.sleep(0.01)
    mon.read()
    assert len(calls) == 2
