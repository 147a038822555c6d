"""Docker HEALTHCHECK: exit 0 only when the server in this container answers /readyz with 200."""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    host = os.environ.get("HOST", "0.0.0.0")  # noqa: S104 - compared, not bound
    # A wildcard listen address is reached through loopback; a specific one (lab namespace address) directly.
    if host in ("", "0.0.0.0"):  # noqa: S104
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{os.environ.get('PORT', '8080')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - fixed http URL to ourselves
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
