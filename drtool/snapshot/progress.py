"""How the engine reports progress: a sink told the total bytes of a phase, then each chunk of bytes done."""

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time, docs/benchmarks.md)
if TYPE_CHECKING:  # a type only: typing.Protocol is not imported at run time (start-up cost, docs/benchmarks.md)
    from typing import Protocol

    class ProgressSink(Protocol):
        def start(self, description: str, total_bytes: int) -> None: ...

        def advance(self, nbytes: int) -> None:
            """Called from worker threads too: implementations must be thread-safe."""


class _NoProgress:
    def start(self, description: str, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass


NO_PROGRESS = _NoProgress()
