"""Build the model-server image offline on a given Docker engine: base image, build context, then the image."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import docker
import docker.errors

from drtool.errors import OperationFailed

HERE = Path(__file__).resolve().parent
BASE_BUILD = HERE.parent / "base" / "build.sh"
PREPARE_CONTEXT = HERE / "prepare_context.sh"
BASE_TAG = "drtool-base:bookworm"
DEFAULT_MODEL = "demo-asr"


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: int = 1800) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise OperationFailed(f"{Path(argv[0]).name} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}",
                              hint="see its messages above; a cold base build needs root and the apt mirror")
    return proc.stdout


def build_model_server_image(engine_url: str, tag: str, cache_dir: str | Path, version: str, git_sha: str, *,
                             model: str = DEFAULT_MODEL, base_tag: str = BASE_TAG,
                             progress: Callable[[str], None] | None = None) -> str:
    """Build `tag` on the engine at `engine_url` with no network and return the image id (sha256:...).

    `cache_dir` keeps what makes a second build fast: base/ (the debootstrap rootfs tarball) and wheels/
    (the pinned PyPI wheels). The base image is imported into the engine only when it lacks that exact rootfs,
    so the engine's layer cache stays valid and a code-only change rebuilds only the code layers.
    """
    say = progress or (lambda _line: None)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    _run([str(BASE_BUILD), engine_url, base_tag, str(cache / "base")])
    say(f"base image {base_tag} ready")

    with tempfile.TemporaryDirectory(prefix="context.", dir=cache) as context:
        _run([str(PREPARE_CONTEXT), context], env={"WHEEL_CACHE": str(cache / "wheels")})
        client = docker.DockerClient(base_url=engine_url, timeout=1800)
        buildargs = {"BASE": base_tag, "MODEL": model, "VERSION": version, "GIT_SHA": git_sha,
                     "BUILD_TIME": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        errors: list[str] = []
        image_id = None
        try:
            # network_mode none: the build must not need the network, and the lab's engines have no bridge.
            for chunk in client.api.build(path=context, tag=tag, buildargs=buildargs, network_mode="none",
                                          rm=True, forcerm=True, pull=False, decode=True):
                if "stream" in chunk and chunk["stream"].strip():
                    say(chunk["stream"].rstrip())
                if "error" in chunk:
                    errors.append(chunk["error"].strip())
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
        except docker.errors.DockerException as exc:
            raise OperationFailed(f"build of {tag} on {engine_url} failed: {exc}") from None
        finally:
            client.close()
    if errors or not image_id:
        raise OperationFailed(f"build of {tag} on {engine_url} failed: {'; '.join(errors) or 'no image id returned'}",
                              hint="the build runs with no network: every file must be in the build context")
    return image_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("engine_url")
    parser.add_argument("tag")
    parser.add_argument("--cache-dir", default="/var/cache/drtool")
    parser.add_argument("--version", default="dev")
    parser.add_argument("--git-sha", default="unknown")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    image_id = build_model_server_image(args.engine_url, args.tag, args.cache_dir, args.version, args.git_sha,
                                        model=args.model, progress=None if args.quiet else print)
    print(image_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
