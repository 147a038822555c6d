"""The image recipes: Dockerfile, base and context scripts, pinned wheels; static checks plus a real context build."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

IMAGES = REPO / "images"
MS = IMAGES / "model-server"
DOCKERFILE = MS / "Dockerfile"
BASE_SH = IMAGES / "base" / "build.sh"
PREPARE = MS / "prepare_context.sh"
REQUIREMENTS = MS / "requirements.txt"
BIN = Path(sys.executable).parent


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    assert not pending, "Dockerfile ends in a continuation line"
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def requirements() -> dict[str, tuple[str, str]]:
    """name -> (version, sha256) from requirements.txt."""
    reqs = {}
    for line in REQUIREMENTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:([0-9a-f]{64})", line.strip())
        assert m, f"requirements.txt line must be NAME==VERSION --hash=sha256:HEX: {line!r}"
        reqs[re.sub(r"[-_.]+", "-", m[1]).lower()] = (m[2], m[3])
    return reqs


def test_dockerfile_builds_from_the_base_arg():
    ins = instructions()
    assert ins[0] == ("ARG", "BASE"), "the base image must be a build argument declared before any FROM"
    froms = [args for word, args in ins if word == "FROM"]
    assert froms and all(re.fullmatch(r"\$\{BASE\}( AS \w+)?", f, re.IGNORECASE) for f in froms), froms


def test_dockerfile_runs_nothing_that_needs_the_network():
    runs = [args for word, args in instructions() if word == "RUN"]
    assert runs
    for cmd in runs:
        assert not re.search(r"\b(curl|wget|apt-get|apt|git|debootstrap)\b|https?://", cmd), cmd
        if "pip install" in cmd:
            for flag in ("--no-index", "--require-hashes", "--find-links /wheels"):
                assert flag in cmd, f"pip install needs {flag}: {cmd}"
    assert not [a for w, a in instructions() if w == "ADD"], "ADD can fetch URLs; use COPY"


def test_final_stage_copies_code_after_packages_and_labels_last():
    final = stages()[-1]
    words = [f"{w} {a}" for w, a in final]

    def index(prefix: str) -> int:
        found = [i for i, w in enumerate(words) if w.startswith(prefix)]
        assert found, f"final stage lacks `{prefix}`"
        return found[0]

    packages = index("COPY --from=deps /usr/local/")
    code = index("COPY app/ /app/")
    per_build = min(index("ARG VERSION"), index("ARG GIT_SHA"), index("ARG BUILD_TIME"))
    # A code-only change must reuse the torch layer; per-build values must not void the code layers' cache.
    assert packages < code < per_build
    assert index("CMD") < per_build
    labels = " ".join(a for w, a in final if w == "LABEL")
    for key in ("org.opencontainers.image.version", "org.opencontainers.image.revision",
                "org.opencontainers.image.created", "io.drtool.model"):
        assert key in labels
    assert "IMAGE_VERSION=${VERSION}" in " ".join(a for w, a in final if w == "ENV")


def test_final_stage_runs_as_non_root_with_healthcheck_and_port():
    final = dict((w, a) for w, a in stages()[-1])
    user = final["USER"].split(":")[0]
    assert user not in ("0", "root") and user.isdigit(), "run as a fixed non-root uid"
    assert final["EXPOSE"] == "8080"
    assert "/app/healthcheck.py" in final["HEALTHCHECK"]
    assert json.loads(final["CMD"]) == ["python3", "/app/server.py"]
    assert (MS / "healthcheck.py").is_file() and (MS / "server.py").is_file()


def test_scripts_parse_and_are_strict():
    for script in (BASE_SH, PREPARE):
        assert os.access(script, os.X_OK), f"{script} must be executable"
        assert "set -euo pipefail" in script.read_text()
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    usage = subprocess.run([str(BASE_SH)], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_base_recipe_is_debootstrap_minbase_with_the_server_packages():
    text = BASE_SH.read_text()
    assert re.search(r"^SUITE=bookworm\b", text, re.M)  # python3.11 = the torch wheel's cp311
    assert re.search(r"^VARIANT=minbase\b", text, re.M)
    packages = re.search(r"^PACKAGES=(\S+)", text, re.M)[1].split(",")
    assert {"python3", "python3-pip", "ca-certificates", "python3-prometheus-client"} <= set(packages)
    assert 'debootstrap --variant="$VARIANT" --include="$PACKAGES"' in text
    assert '/etc/apt/sources.list.d/*.sources' in text


def test_requirements_pin_torch_and_all_its_dependencies():
    reqs = requirements()
    version, digest = reqs["torch"]
    wheel = Path(f"/opt/wheels/torch-{version}-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert wheel.is_file(), f"the local torch wheel {wheel} is missing"
    with open(wheel, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    needed = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", line.split(":", 1)[1].strip())[0]).lower()
              for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert needed <= set(reqs), f"torch needs {sorted(needed - set(reqs))}, missing from requirements.txt"
    assert "safetensors" in reqs


def test_build_helper_has_the_agreed_signature():
    spec = importlib.util.spec_from_file_location("model_server_build", MS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = list(inspect.signature(module.build_model_server_image).parameters)
    assert params[:5] == ["engine_url", "tag", "cache_dir", "version", "git_sha"]
    assert module.BASE_BUILD == BASE_SH and module.PREPARE_CONTEXT == PREPARE


def test_images_python_passes_ruff():
    # tests/test_lint.py covers drtool/ and tests/; the image code lives outside them.
    proc = subprocess.run([str(BIN / "ruff"), "check", str(IMAGES)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.fixture(scope="session")
def context(tmp_path_factory) -> Path:
    """A real build context: pinned wheels from PyPI (hash-checked) plus the local torch wheel."""
    root = tmp_path_factory.mktemp("image-context")
    ctx = root / "ctx"
    proc = subprocess.run([str(PREPARE), str(ctx)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WHEEL_CACHE": str(root / "wheels"), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(ctx)
    return ctx


def test_context_holds_what_the_dockerfile_copies(context):
    assert (context / "Dockerfile").read_bytes() == DOCKERFILE.read_bytes()
    for name in ("server.py", "gpu_health.py", "healthcheck.py"):
        assert (context / "app" / name).read_bytes() == (MS / name).read_bytes()
    model_src = sorted(p.name for p in (REPO / "drtool" / "model").glob("*.py"))
    assert sorted(p.name for p in (context / "app" / "drtool" / "model").iterdir()) == model_src
    for name in model_src:
        assert (context / "app" / "drtool" / "model" / name).read_bytes() == \
            (REPO / "drtool" / "model" / name).read_bytes()
    # No drtool/__init__.py: the image's drtool is a namespace package holding the model code only.
    assert not (context / "app" / "drtool" / "__init__.py").exists()
    assert (context / "wheels" / "requirements.txt").read_bytes() == REQUIREMENTS.read_bytes()
    for src, dest in (ins[1].split()[-2:] for ins in instructions() if ins[0] == "COPY" and "--from" not in ins[1]):
        assert (context / src).exists(), f"COPY {src} {dest}: not in the context"


def test_context_wheels_install_offline(context, tmp_path):
    """What the Dockerfile's pip does, dry-run: only the context's wheels, every hash checked, nothing missing."""
    # No machine pip config or PIP_* variables: a find-links outside the context must not hide a missing wheel.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    report = tmp_path / "report.json"
    wheels = context / "wheels"
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
            "--find-links", str(wheels), "--require-hashes", "-r", str(wheels / "requirements.txt"),
            "--disable-pip-version-check", "--quiet", "--report", str(report)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stderr[-3000:]}"
    installed = {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    assert installed == {name: version for name, (version, _) in requirements().items()}
