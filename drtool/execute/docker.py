"""Docker engine calls through the Docker SDK: import, tag, push and inspect images on a given engine."""

import io
from dataclasses import dataclass

import docker
import docker.errors

from drtool.errors import OperationFailed


@dataclass
class PushedImage:
    reference: str        # registry/repo:tag
    digest: str           # sha256:...
    by_digest: str        # registry/repo@sha256:...


def engine(url: str, timeout: int = 120) -> docker.DockerClient:
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise OperationFailed(f"Docker engine {url} does not answer: {exc}",
                              hint="check that the engine runs and its socket path is right") from None
    return client


def import_tarball(client: docker.DockerClient, tar_bytes: bytes, repository: str, tag: str,
                   changes: list[str] | None = None) -> str:
    """`docker import`: a root filesystem tarball becomes an image; returns its id."""
    try:
        resp = client.api.import_image_from_data(tar_bytes, repository=repository, tag=tag, changes=changes)
    except docker.errors.APIError as exc:
        raise OperationFailed(f"docker import of {repository}:{tag} failed: {exc.explanation}") from None
    return client.images.get(f"{repository}:{tag}").id if resp else ""


def push(client: docker.DockerClient, repository: str, tag: str) -> PushedImage:
    """Push and return the digest the registry reported."""
    digest = None
    errors = []
    for line in client.api.push(repository, tag=tag, stream=True, decode=True):
        if "error" in line:
            errors.append(line.get("error"))
        aux = line.get("aux") or {}
        if "Digest" in aux:
            digest = aux["Digest"]
    if errors or not digest:
        raise OperationFailed(f"push of {repository}:{tag} failed: {'; '.join(errors) or 'no digest returned'}",
                              hint="check that the registry is up and its CA is trusted by the engine")
    return PushedImage(f"{repository}:{tag}", digest, f"{repository}@{digest}")


def tar_of_files(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tarball from {path: (content, mode)}, for tiny offline images."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()
