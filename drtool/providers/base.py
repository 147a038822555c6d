"""The standby-provider interface and the SSH readiness wait every provider shares."""

import socket
import time
from abc import ABC, abstractmethod

from drtool.config import Host
from drtool.errors import OperationFailed


class StandbyProvider(ABC):
    name: str

    @abstractmethod
    def power_on(self, host: Host) -> None:
        """Start the host (no-op when it already runs)."""

    @abstractmethod
    def power_off(self, host: Host) -> None:
        """Stop the host so it serves nothing (cold standby)."""

    @abstractmethod
    def state(self, host: Host) -> str:
        """'on', 'off' or 'unknown'."""

    def wait_ready(self, host: Host, timeout: float = 120) -> float:
        """Wait until the host's sshd answers with its banner; returns the seconds waited."""
        return wait_for_ssh(host.address, host.port, timeout)


def ssh_banner(address: str, port: int = 22, timeout: float = 2.0) -> str | None:
    """The SSH server's identification line, or None if nothing answers."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = sock.recv(256)
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0].decode("ascii", "replace")
    return line if line.startswith("SSH-") else None


def wait_for_ssh(address: str, port: int = 22, timeout: float = 120) -> float:
    start = time.monotonic()
    while True:
        if ssh_banner(address, port):
            return round(time.monotonic() - start, 3)
        if time.monotonic() - start > timeout:
            raise OperationFailed(f"{address}:{port} did not answer SSH within {timeout:.0f}s",
                                  hint="check the host's power state and sshd")
        time.sleep(0.2)
