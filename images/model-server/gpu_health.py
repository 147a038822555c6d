"""GPU readings for the model server: memory, utilization and temperature per device, and readiness limits.

Sources, best first: torch.cuda for memory (what the serving process sees), NVML (`nvidia-ml-py`, module `pynvml`)
when importable, else `nvidia-smi --query-gpu` for utilization and temperature (and for memory when torch has no
CUDA, e.g. a CPU torch build on a GPU host). No GPU at all is reported as such (source `none`), never as zeros.

Drill hook: with `GPU_FAULT_FILE=/path` set and that file present, its JSON replaces the reading (source
`fault-hook`, simulated): `{"device": 0, "temperature_c": 95, "memory_used_pct": 97}` or a list of such objects.
Off unless the variable is set; meant for drills on hosts without a GPU. No torch import here: server.py passes
its torch module in, and the parser is testable on its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20
NVIDIA_SMI_QUERY = ["--query-gpu=index,memory.used,memory.total,utilization.gpu,temperature.gpu",
                    "--format=csv,noheader,nounits"]
SIMULATED_TOTAL_BYTES = 16 << 30  # a fault hook that gives only percentages reports a 16 GiB device


@dataclass
class Device:
    index: int
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    utilization_ratio: float | None = None  # 0..1
    temperature_c: float | None = None

    @property
    def memory_used_pct(self) -> float | None:
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        return 100.0 * self.memory_used_bytes / self.memory_total_bytes


@dataclass
class Reading:
    source: str  # torch, torch+nvml, torch+nvidia-smi, nvml, nvidia-smi, none, fault-hook
    devices: list[Device] = field(default_factory=list)
    simulated: bool = False
    errors: list[str] = field(default_factory=list)  # sources tried that failed (logged by the server)

    @property
    def present(self) -> bool:
        return bool(self.devices)


@dataclass
class Limits:
    memory_pct: float | None = None
    temperature_c: float | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Limits:
        return cls(_float_env(env, "GPU_MEMORY_LIMIT_PCT", 0, 100), _float_env(env, "GPU_TEMPERATURE_LIMIT_C", 0, 200))


def _float_env(env: dict[str, str], name: str, lo: float, hi: float) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number (got {raw!r})") from None
    if not lo < value <= hi:
        raise ValueError(f"{name} must be above {lo:g} and at most {hi:g} (got {raw})")
    return value


def _fmt(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def limit_violations(reading: Reading, limits: Limits) -> list[str]:
    """One sentence per crossed limit, e.g. 'gpu 0 temperature 91 °C above limit 85 °C'."""
    out = []
    for d in reading.devices:
        pct = d.memory_used_pct
        if limits.memory_pct is not None and pct is not None and pct > limits.memory_pct:
            out.append(f"gpu {d.index} memory {_fmt(pct)} % used above limit {_fmt(limits.memory_pct)} %")
        if limits.temperature_c is not None and d.temperature_c is not None and d.temperature_c > limits.temperature_c:
            out.append(f"gpu {d.index} temperature {_fmt(d.temperature_c)} °C "
                       f"above limit {_fmt(limits.temperature_c)} °C")
    if out and reading.simulated:
        out = [f"{v} (simulated by the GPU fault hook)" for v in out]
    return out


# -- nvidia-smi ------------------------------------------------------------------------------------------------
def _smi_number(raw: str) -> float | None:
    raw = raw.strip()
    if not raw or raw.startswith("[") or raw.upper() in ("N/A", "NA"):  # "[N/A]", "[Not Supported]"
        return None
    return float(raw)


def parse_nvidia_smi(text: str) -> list[Device]:
    """Parse `nvidia-smi --query-gpu=index,memory.used,memory.total,utilization.gpu,temperature.gpu
    --format=csv,noheader,nounits`: one line per GPU, memory in MiB, utilization in %, temperature in °C.
    Unsupported fields ("[N/A]", "[Not Supported]") become None; a line of another shape raises ValueError."""
    devices = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) != 5:
            raise ValueError(f"nvidia-smi line {n}: expected 5 comma-separated fields, got {len(cols)}: {line!r}")
        try:
            index = int(cols[0])
            used, total, util, temp = (_smi_number(c) for c in cols[1:])
        except ValueError:
            raise ValueError(f"nvidia-smi line {n}: not numbers: {line!r}") from None
        devices.append(Device(index, None if used is None else used * MIB, None if total is None else total * MIB,
                              None if util is None else util / 100.0, temp))
    return devices


def read_nvidia_smi(binary: str = "nvidia-smi", timeout: float = 5.0) -> list[Device]:
    proc = subprocess.run([binary, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"nvidia-smi exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}")
    return parse_nvidia_smi(proc.stdout)


# -- NVML ------------------------------------------------------------------------------------------------------
def read_nvml(pynvml) -> list[Device]:
    pynvml.nvmlInit()  # reference-counted by NVML; cheap after the first call
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            d = Device(i, float(mem.used), float(mem.total))
            try:
                d.utilization_ratio = pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            except pynvml.NVMLError:
                pass
            try:
                d.temperature_c = float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
            except pynvml.NVMLError:
                pass
            devices.append(d)
        return devices
    finally:
        pynvml.nvmlShutdown()


# -- the fault hook --------------------------------------------------------------------------------------------
def parse_fault(doc) -> list[Device]:
    """The fault hook file's JSON: one object or a list; each {"device", "temperature_c", "memory_used_pct",
    "memory_total_bytes", "utilization_pct"}, all optional but device (default 0)."""
    items = doc if isinstance(doc, list) else [doc]
    devices = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each entry must be a JSON object")
        unknown = set(item) - {"device", "temperature_c", "memory_used_pct", "memory_total_bytes", "utilization_pct"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        for k, v in item.items():
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise ValueError(f"{k} must be a number")
        total = float(item.get("memory_total_bytes", SIMULATED_TOTAL_BYTES))
        pct = item.get("memory_used_pct")
        util = item.get("utilization_pct")
        devices.append(Device(int(item.get("device", 0)), None if pct is None else total * pct / 100.0, total,
                              None if util is None else util / 100.0,
                              None if item.get("temperature_c") is None else float(item["temperature_c"])))
    return devices


# -- the monitor -----------------------------------------------------------------------------------------------
class GpuMonitor:
    """Reads the GPUs at most every `poll_seconds` (the fault hook file: on every call) and remembers the last
    reading; `on_error` is called with each new failure message of a source (so it is logged once)."""

    def __init__(self, torch_module, env: dict[str, str], poll_seconds: float = 5.0,
                 on_error: Callable[[str], None] | None = None):
        self.torch = torch_module
        self.fault_file = Path(env["GPU_FAULT_FILE"]) if env.get("GPU_FAULT_FILE") else None
        self.visible = env.get("CUDA_VISIBLE_DEVICES")
        self.poll_seconds = poll_seconds
        self.on_error = on_error or (lambda _msg: None)
        self._lock = threading.Lock()
        self._cached: Reading | None = None
        self._cached_at = 0.0
        self._reported: set[str] = set()
        try:
            import pynvml  # noqa: PLC0415 - optional: package nvidia-ml-py
            self.pynvml = pynvml
        except ImportError:
            self.pynvml = None
        self.smi = shutil.which("nvidia-smi")

    def read(self) -> Reading:
        hook = self._read_fault_hook()
        if hook is not None:
            return hook
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached_at >= self.poll_seconds:
                self._cached, self._cached_at = self._read_hardware(), now
                for err in self._cached.errors:
                    if err not in self._reported:
                        self._reported.add(err)
                        self.on_error(err)
            return self._cached

    def _read_fault_hook(self) -> Reading | None:
        if self.fault_file is None:
            return None
        try:
            raw = self.fault_file.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._report(f"GPU fault hook {self.fault_file} not readable: {exc}")
            return None
        try:
            devices = parse_fault(json.loads(raw))
        except ValueError as exc:
            self._report(f"GPU fault hook {self.fault_file} ignored: {exc}")
            return None
        return Reading("fault-hook", devices, simulated=True)

    def _report(self, msg: str) -> None:
        with self._lock:
            if msg in self._reported:
                return
            self._reported.add(msg)
        self.on_error(msg)

    def _physical_index(self, torch_index: int) -> int:
        """NVML and nvidia-smi number every GPU of the host; torch only the CUDA_VISIBLE_DEVICES ones."""
        if self.visible:
            ids = [v.strip() for v in self.visible.split(",")]
            if torch_index < len(ids) and ids[torch_index].isdigit():
                return int(ids[torch_index])
        return torch_index

    def _read_hardware(self) -> Reading:
        errors: list[str] = []
        torch_devices: list[Device] = []
        try:
            if self.torch is not None and self.torch.cuda.is_available():
                for i in range(self.torch.cuda.device_count()):
                    free, total = self.torch.cuda.mem_get_info(i)
                    torch_devices.append(Device(i, float(total - free), float(total)))
        except Exception as exc:  # noqa: BLE001 - a broken driver must not break /metrics
            errors.append(f"torch.cuda memory: {type(exc).__name__}: {exc}")
            torch_devices = []
        telemetry, tsource = [], None
        if self.pynvml is not None:
            try:
                telemetry, tsource = read_nvml(self.pynvml), "nvml"
            except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound etc. on hosts without a driver
                errors.append(f"nvml: {type(exc).__name__}: {exc}")
        if tsource is None and self.smi:
            try:
                telemetry, tsource = read_nvidia_smi(self.smi), "nvidia-smi"
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                errors.append(f"nvidia-smi: {type(exc).__name__}: {exc}")
        if torch_devices:
            by_index = {d.index: d for d in telemetry}
            for d in torch_devices:
                t = by_index.get(self._physical_index(d.index))
                if t is not None:
                    d.utilization_ratio, d.temperature_c = t.utilization_ratio, t.temperature_c
            source = "torch+" + tsource if tsource and by_index else "torch"
            return Reading(source, torch_devices, errors=errors)
        if telemetry:
            return Reading(tsource, telemetry, errors=errors)
        return Reading("none", [], errors=errors)
