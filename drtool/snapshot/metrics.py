"""Backup metrics as a Prometheus textfile (node_exporter's textfile collector reads it), written atomically."""

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

LAST_SUCCESS = "drtool_backup_last_success_timestamp_seconds"
VERIFY_FAILURES = "drtool_backup_verify_failures_total"


def _previous(path: Path) -> dict[str, float]:
    """Values kept across runs: the last success survives a failed run; verify failures accumulate."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = sample.value
    except ValueError:  # a damaged file is rewritten whole below
        return {}
    return out


def write_backup_metrics(path: str | Path, model: str, ok: bool, duration_s: float, result: dict | None = None,
                         verify_failed: bool = False) -> None:
    path = Path(path)
    prev = _previous(path)
    reg = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, ["model"], registry=reg).labels(model=model).set(value)

    now = time.time()
    gauge("drtool_backup_last_run_timestamp_seconds", "When the last snapshot run ended.", now)
    gauge("drtool_backup_last_run_success", "1 if the last snapshot run succeeded, else 0.", 1.0 if ok else 0.0)
    gauge(LAST_SUCCESS, "When the last successful snapshot ended.", now if ok else prev.get(LAST_SUCCESS, 0.0))
    gauge("drtool_backup_duration_seconds", "Duration of the last snapshot run.", duration_s)
    if result:
        gauge("drtool_backup_bytes_total", "Bytes in the last snapshot.", result.get("bytes_total", 0))
        gauge("drtool_backup_bytes_read", "Bytes read by the last snapshot run.", result.get("bytes_read", 0))
        gauge("drtool_backup_bytes_uploaded", "Bytes uploaded by the last snapshot run.",
              result.get("bytes_uploaded", 0))
    gauge(VERIFY_FAILURES, "Sampled verifications that failed after a snapshot, since the file was created.",
          prev.get(VERIFY_FAILURES, 0.0) + (1.0 if verify_failed else 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), reg)  # temp file + rename: never seen half-written
