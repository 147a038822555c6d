"""A deterministic stand-in speech model: network definition, seeded weight writer, loader and predict."""

import argparse
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

FORMAT = "drtool-demo-acoustic"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
DEFAULT_MODEL = "demo-asr"
DEFAULT_VERSION = "1.0.0"
MiB = 1 << 20
# Padding is cut into tensors of at most this size so a multi-GB checkpoint never needs one giant allocation.
PADDING_CHUNK_BYTES = 64 * MiB
AUTO_SHARD_BYTES = 1024 * MiB
MAX_FRAMES = 3000          # 30 s of 10 ms frames
MAX_BATCH = 32


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters of the network; written to config.json and read back by the loader."""

    n_features: int = 80       # log-mel bins per frame
    conv_channels: int = 256
    kernel_size: int = 5       # odd, so the conv keeps the frame count
    hidden: int = 256
    gru_layers: int = 2
    num_classes: int = 32      # e.g. characters of a CTC alphabet

    def check(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"architecture.{name} must be a positive integer (got {value!r})")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"architecture.kernel_size must be odd (got {self.kernel_size})")


class InputError(ValueError):
    """Inputs the model cannot take; the message says exactly what is wrong (the server answers 400 with it)."""


class WeightsError(ValueError):
    """A weights directory that does not hold a loadable demo model."""


class DemoAcousticModel(nn.Module):
    """Conv1d front end, GRU and a per-frame classifier: frames [B, T, F] -> class logits [B, T, C]."""

    def __init__(self, arch: Architecture, padding_sizes: dict[str, int] | None = None):
        super().__init__()
        arch.check()
        self.arch = arch
        self.conv = nn.Conv1d(arch.n_features, arch.conv_channels, arch.kernel_size, padding=arch.kernel_size // 2)
        self.gru = nn.GRU(arch.conv_channels, arch.hidden, num_layers=arch.gru_layers, batch_first=True)
        self.head = nn.Linear(arch.hidden, arch.num_classes)
        # Padding stands in for the bulk of a real checkpoint: loaded and held like weights, unused by forward.
        self.padding = nn.Module()
        for name, numel in (padding_sizes or {}).items():
            self.padding.register_buffer(name, torch.empty(numel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        h, _ = self.gru(h)
        return self.head(h)


def configure_determinism(threads: int = 1) -> None:
    """Same input, same output bit for bit: deterministic kernels and a fixed intra-op thread count.

    The thread count is fixed (not the core count) because a GEMM split over a different number of threads
    may round differently; every process that must agree (server, tests, host reference) uses the same value.
    """
    # cuBLAS needs this before the CUDA context exists for deterministic GEMMs (GRU on GPU).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.set_num_threads(threads)


def _seeded_values(seed: int, name: str, numel: int, bound: float) -> torch.Tensor:
    """Uniform values in [-bound, bound) from SHAKE-256 of (seed, name): identical bytes on any torch version."""
    raw = bytearray(hashlib.shake_256(f"{FORMAT}/{seed}/{name}".encode()).digest(2 * numel))
    # Little-endian int16, as on every platform torch ships for.
    return torch.frombuffer(raw, dtype=torch.int16).to(torch.float32).mul_(bound / 32768.0)


def _core_specs(arch: Architecture) -> list[tuple[str, tuple[int, ...]]]:
    with torch.device("meta"):
        state = DemoAcousticModel(arch).state_dict()
    return [(name, tuple(t.shape)) for name, t in state.items()]


def _init_bound(name: str, arch: Architecture) -> float:
    # PyTorch's own default init ranges, so activations stay in a sane range.
    if name.startswith("conv."):
        return 1.0 / math.sqrt(arch.n_features * arch.kernel_size)
    if name.startswith(("gru.", "head.")):
        return 1.0 / math.sqrt(arch.hidden)
    return 0.02


def _plan_shards(core: list[tuple[str, tuple[int, ...]]], target: int, n: int) -> list[list[tuple[str, tuple]]]:
    """Spread the core tensors, then padding, so that shard i ends at byte target*(i+1)/n of the whole."""
    ends = [target * (i + 1) // n // 4 * 4 for i in range(n)]
    plan: list[list[tuple[str, tuple]]] = [[] for _ in range(n)]
    offset, shard = 0, 0
    for name, shape in core:
        while shard < n - 1 and offset >= ends[shard]:
            shard += 1
        plan[shard].append((name, shape))
        offset += 4 * math.prod(shape)
    end, pad_index = 0, 0
    for i in range(n):
        end += sum(4 * math.prod(shape) for _, shape in plan[i])
        room = ends[i] - end
        while room > 0:
            chunk = min(room, PADDING_CHUNK_BYTES)
            plan[i].append((f"padding.p{pad_index:05d}", (chunk // 4,)))
            pad_index += 1
            room -= chunk
            end += chunk
    return plan


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_demo_weights(dest_dir: str | os.PathLike, size_mb: float = 40, seed: int = 0, shards: int | None = None, *,
                       model: str = DEFAULT_MODEL, version: str = DEFAULT_VERSION, arch: Architecture | None = None,
                       overwrite: bool = False) -> list[Path]:
    """Write `.safetensors` shards and config.json for a model of about `size_mb` MiB; returns the files written.

    The bytes depend only on (seed, architecture, size, shards): the same call writes the same files anywhere.
    `shards=None` picks one shard per GiB. Shards are written before config.json, so a directory with a
    config.json is complete.
    """
    from safetensors.torch import save_file

    arch = arch or Architecture()
    arch.check()
    dest = Path(dest_dir)
    core = _core_specs(arch)
    core_bytes = sum(4 * math.prod(shape) for _, shape in core)
    target = int(size_mb * MiB) // 4 * 4
    if target < core_bytes:
        raise ValueError(f"size_mb={size_mb} is below the network itself ({core_bytes / MiB:.2f} MiB)")
    n_shards = shards if shards is not None else max(1, math.ceil(target / AUTO_SHARD_BYTES))
    if n_shards < 1:
        raise ValueError(f"shards must be at least 1 (got {shards})")
    plan = _plan_shards(core, target, n_shards)
    if any(not tensors for tensors in plan):
        raise ValueError(f"{size_mb} MiB is too small to fill {n_shards} shards")

    dest.mkdir(parents=True, exist_ok=True)
    stale = sorted(dest.glob("*.safetensors")) + ([dest / CONFIG_NAME] if (dest / CONFIG_NAME).exists() else [])
    if stale and not overwrite:
        raise FileExistsError(f"{dest} already holds model files ({stale[0].name}, ...); pass overwrite=True")
    for path in stale:
        path.unlink()

    files: list[Path] = []
    weight_map: dict[str, str] = {}
    shard_names = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    for shard_name, tensors in zip(shard_names, plan, strict=True):
        state = {name: _seeded_values(seed, name, math.prod(shape), _init_bound(name, arch)).reshape(shape)
                 for name, shape in tensors}
        tmp = dest / f".{shard_name}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        # safetensors creates files 0600; the server runs as a non-root user and must be able to read them.
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest / shard_name)
        weight_map.update({name: shard_name for name in state})
        files.append(dest / shard_name)
        del state
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model,
        "version": version,
        "seed": seed,
        "dtype": "float32",
        "architecture": asdict(arch),
        "tensor_bytes": target,
        "shards": shard_names,
        "weight_map": weight_map,
    }
    _atomic_write_bytes(dest / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    files.append(dest / CONFIG_NAME)
    return files


def read_config(weights_dir: str | os.PathLike) -> dict:
    path = Path(weights_dir) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a {FORMAT} config (format={config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path} has format_version {config.get('format_version')!r}; this code reads "
                           f"{FORMAT_VERSION}")
    for key, kind in (("architecture", dict), ("shards", list), ("weight_map", dict)):
        if not isinstance(config.get(key), kind):
            raise WeightsError(f"{path}: '{key}' must be a {kind.__name__}")
    for shard in config["shards"]:
        if not isinstance(shard, str) or "/" in shard or shard.startswith(".") or not shard.endswith(".safetensors"):
            raise WeightsError(f"{path}: bad shard name {shard!r}")
    return config


def model_files(weights_dir: str | os.PathLike) -> list[str]:
    """Paths, relative to the weights dir, of every file load_demo_model reads."""
    return [CONFIG_NAME, *read_config(weights_dir)["shards"]]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_demo_model(weights_dir: str | os.PathLike, device: str | None = None, threads: int = 1) -> DemoAcousticModel:
    """Load config.json and every shard it lists; all tensors named in its weight_map, no more, no fewer."""
    from safetensors.torch import load_file

    configure_determinism(threads)
    weights_dir = Path(weights_dir)
    config = read_config(weights_dir)
    try:
        arch = Architecture(**config["architecture"])
        arch.check()
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{weights_dir / CONFIG_NAME}: bad architecture: {exc}") from None
    weight_map: dict[str, str] = config["weight_map"]
    state: dict[str, torch.Tensor] = {}
    for shard in config["shards"]:
        try:
            tensors = load_file(str(weights_dir / shard))
        except FileNotFoundError:
            raise WeightsError(f"{weights_dir / shard} is missing") from None
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise WeightsError(f"{weights_dir / shard} is not a readable safetensors file: {exc}") from None
        for name, tensor in tensors.items():
            if weight_map.get(name) != shard:
                raise WeightsError(f"{shard} holds tensor {name}, which config.json places in {weight_map.get(name)}")
            if tensor.dtype != torch.float32:
                raise WeightsError(f"{shard}: tensor {name} is {tensor.dtype}, expected float32")
            # Own the memory: a tensor still backed by the file's mmap would change if the file were rewritten
            # in place after verification.
            state[name] = tensor.clone()
        del tensors
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise WeightsError(f"tensors named in config.json but in no shard: {', '.join(missing[:5])}")
    padding = {}
    for name, tensor in state.items():
        if name.startswith("padding."):
            if tensor.dim() != 1:
                raise WeightsError(f"padding tensor {name} must be 1-D (shape {tuple(tensor.shape)})")
            padding[name.split(".", 1)[1]] = tensor.numel()
    # Build on the meta device and adopt the loaded tensors: no second copy of a multi-GB checkpoint.
    with torch.device("meta"):
        model = DemoAcousticModel(arch, padding)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights do not fit the architecture in config.json: {exc}") from None
    model.eval()
    return model.to(device or default_device())


def _check_frames(frames: object, where: str, n_features: int) -> int:
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{where} must be a non-empty list of frames")
    if len(frames) > MAX_FRAMES:
        raise InputError(f"{where} has {len(frames)} frames; at most {MAX_FRAMES} are accepted")
    for t, frame in enumerate(frames):
        if not isinstance(frame, list):
            raise InputError(f"{where}[{t}] must be a list of {n_features} numbers (got {type(frame).__name__})")
        if len(frame) != n_features:
            raise InputError(f"{where}[{t}] has {len(frame)} features; the model takes {n_features}")
        for f, value in enumerate(frame):
            # bool is an int subclass; a JSON true is not a feature value.
            if type(value) not in (int, float):
                raise InputError(f"{where}[{t}][{f}] is {value!r} ({type(value).__name__}); expected a number")
            if not math.isfinite(value):
                raise InputError(f"{where}[{t}][{f}] is {value!r}; values must be finite")
    return len(frames)


def to_input_tensor(inputs: object, n_features: int) -> tuple[torch.Tensor, bool]:
    """Validate inputs ([T][F] frames, or [B][T][F] equal-length batches); returns ([B, T, F] float32, single)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() not in (2, 3) or inputs.shape[-1] != n_features or not inputs.is_floating_point():
            raise InputError(f"inputs tensor must be float [T, {n_features}] or [B, T, {n_features}] "
                             f"(got {inputs.dtype} {tuple(inputs.shape)})")
        if not torch.isfinite(inputs).all():
            raise InputError("inputs tensor has non-finite values")
        single = inputs.dim() == 2
        x = inputs.to(torch.float32).contiguous()
        return (x.unsqueeze(0) if single else x), single
    if not isinstance(inputs, list) or not inputs:
        raise InputError("inputs must be a non-empty list: frames [T][F] or a batch of them [B][T][F]")
    single = not (isinstance(inputs[0], list) and inputs[0] and isinstance(inputs[0][0], list))
    if single:
        _check_frames(inputs, "inputs", n_features)
        return torch.tensor([inputs], dtype=torch.float32), True
    if len(inputs) > MAX_BATCH:
        raise InputError(f"inputs holds {len(inputs)} utterances; at most {MAX_BATCH} per request")
    lengths = [_check_frames(utt, f"inputs[{b}]", n_features) for b, utt in enumerate(inputs)]
    if len(set(lengths)) > 1:
        raise InputError(f"utterances in a batch must have equal frame counts (got {lengths})")
    return torch.tensor(inputs, dtype=torch.float32), False


def predict(model: DemoAcousticModel, inputs: object) -> torch.Tensor:
    """Class logits for inputs: [T, C] for one utterance [T][F], [B, T, C] for a batch; float32 on CPU."""
    x, single = to_input_tensor(inputs, model.arch.n_features)
    with torch.inference_mode():
        y = model(x.to(model.head.weight.device)).to("cpu", torch.float32)
    return y[0] if single else y


def demo_inputs(frames: int = 50, seed: int = 0, batch: int | None = None, n_features: int = 80) -> list:
    """Deterministic feature frames as nested lists of float32-exact numbers (they survive JSON unchanged)."""
    shape = (frames, n_features) if batch is None else (batch, frames, n_features)
    return _seeded_values(seed, "inputs", math.prod(shape), 1.0).reshape(shape).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drtool.model.demo", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write seeded weights and config.json into DEST")
    w.add_argument("dest")
    w.add_argument("--size-mb", type=float, default=40)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--shards", type=int, default=None)
    w.add_argument("--model", default=DEFAULT_MODEL)
    w.add_argument("--version", default=DEFAULT_VERSION)
    w.add_argument("--overwrite", action="store_true")
    i = sub.add_parser("inputs", help="print deterministic demo inputs as {\"inputs\": ...}")
    i.add_argument("--frames", type=int, default=50)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--batch", type=int, default=None)
    p = sub.add_parser("predict", help="read {\"inputs\": ...} on stdin, print {\"outputs\": ...}")
    p.add_argument("weights_dir")
    args = parser.parse_args(argv)

    if args.cmd == "write":
        files = write_demo_weights(args.dest, args.size_mb, args.seed, args.shards, model=args.model,
                                   version=args.version, overwrite=args.overwrite)
        print(json.dumps({"files": [str(f) for f in files], "bytes": sum(f.stat().st_size for f in files)}))
    elif args.cmd == "inputs":
        print(json.dumps({"inputs": demo_inputs(args.frames, args.seed, args.batch)}))
    else:
        model = load_demo_model(args.weights_dir, device="cpu")
        print(json.dumps({"outputs": predict(model, json.load(sys.stdin)["inputs"]).tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
