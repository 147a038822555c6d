"""Container registries over the Distribution HTTP API: does a site's registry hold an image digest?"""

import requests

from drtool.errors import OperationFailed

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def has_manifest(registry: str, repository: str, digest: str, ca_file: str | None, timeout: float = 10) -> bool:
    """True when `registry` serves `repository@digest` (HEAD /v2/<repo>/manifests/<digest>), checked over TLS
    against the site's CA. Raises OperationFailed when the registry cannot be asked at all."""
    url = f"https://{registry}/v2/{repository}/manifests/{digest}"
    try:
        resp = requests.head(url, headers={"Accept": MANIFEST_TYPES}, timeout=timeout, verify=ca_file or True)
    except requests.RequestException as exc:
        raise OperationFailed(f"container registry {registry} did not answer: {type(exc).__name__}",
                              hint="check that the site's registry is up and trusted "
                                   "(container_registry.ca_file)") from None
    if resp.status_code == 404:
        return False
    if resp.status_code != 200:
        raise OperationFailed(f"container registry {registry} answered HTTP {resp.status_code} "
                              f"for {repository}@{digest}")
    served = resp.headers.get("Docker-Content-Digest")
    return served in (None, digest)
