"""drtool image build: build the versioned model-serving image offline and push it to every site's registry."""

import subprocess

from drtool.config import Config
from drtool.errors import OperationFailed
from drtool.execute.ansible import run_playbook
from drtool.output import Output
from drtool.paths import project_root


def source_id() -> str:
    """`git describe` of the checkout the image is built from (the source identifier in tags and labels)."""
    try:
        return subprocess.run(["git", "-C", str(project_root()), "describe", "--always", "--dirty", "--tags"],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_time() -> str:
    """The source's commit time, recorded as the build time: a rebuild of unchanged sources then hits the layer
    cache all the way and yields the same image, hence the same digest (a wall-clock label never would)."""
    try:
        return subprocess.run(["git", "-C", str(project_root()), "log", "-1", "--format=%cI"],
                              capture_output=True, text=True, check=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build(config: Config, out: Output, model_name: str, version: str | None, push: bool) -> dict:
    model = config.model(model_name)
    git_sha = source_id()
    version = version or git_sha.replace("-dirty", "")
    registries = [s.registry_url for s in config.sites.values()] if push else []
    with out.working(f"building {model.image}:{version}"):
        res = run_playbook(config, "build_image.yml", progress=out.ansible_progress(), extravars={
            "serving_image_build_engine": config.build_engine,
            "serving_image_repository": model.image,
            "serving_image_model": model.name,
            "serving_image_version": version,
            "serving_image_git_sha": git_sha,
            "serving_image_build_time": source_time(),
            "serving_image_registries": registries,
            "serving_image_cache_dir": config.build_cache_dir,
            "drtool_push": push,
        })
    data = res.results.get("localhost", {})
    result = {"model": model.name, "repository": model.image, "version": version, "source": git_sha,
              "image_id": data.get("image_id"), "labels": data.get("labels", {}), "pushed": {}, "digest": None,
              "seconds": res.seconds}
    if push:
        by_registry = {}
        for ref in data.get("repo_digests", []):  # REGISTRY/REPO@sha256:...
            name, _, digest = ref.partition("@")
            by_registry[name.removesuffix("/" + model.image)] = digest
        digests = {by_registry.get(r) for r in registries}
        missing = [r for r in registries if r not in by_registry]
        if missing or len(digests) != 1:
            raise OperationFailed(f"push of {model.image}:{version} did not report one digest for every registry",
                                  details=[f"{r}: {by_registry.get(r, 'no digest')}" for r in registries])
        digest = digests.pop()
        result.update(digest=digest, pushed={r: f"{r}/{model.image}@{digest}" for r in registries},
                      tags=[version, "src-" + "".join(c if c.isalnum() or c in "_.-" else "_" for c in git_sha)])
    return result
