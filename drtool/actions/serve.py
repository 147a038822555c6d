"""drtool serve: receive Alertmanager webhooks and start (or queue for approval) failovers. Alerts about one serving
instance of the primary climb its escalation ladder first (restart in place, drain; drtool/alerts/ladder.py)."""

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from drtool.alerts.claims import OutageClaims
from drtool.alerts.decisions import DecisionBook, alerts_state_dir
from drtool.alerts.ladder import AlertLadder, Remedies
from drtool.alerts.receiver import ReceiverServer
from drtool.config import Config, Site
from drtool.errors import UsageError
from drtool.ha.instances import ServingInstance
from drtool.output import Output


def read_token(config: Config) -> str:
    path = config.alerts.token_file
    if not path:
        raise UsageError("alerts.token_file is not set: drtool serve never accepts unauthenticated webhooks",
                         hint="write a random token to a 0600 file, name it in alerts.token_file, and give the "
                              "same file to Alertmanager (http_config.authorization.credentials_file)")
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read alerts.token_file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise UsageError(f"the token in {path} is shorter than 16 characters", hint="use a long random token")
    return token


Command = Callable[[Config, str, str, str], list[str]]   # (config, dr site, run id, reason) -> argv


def failover_command(config: Config, site: str, run_id: str, reason: str) -> list[str]:
    return [sys.executable, "-m", "drtool", "--config", str(config.path), "failover", "--site", site, "--yes",
            "--run-id", run_id, "--reason", reason]


def resume_command(config: Config, site: str, run_id: str, reason: str) -> list[str]:
    """A launched failover that died is finished by `--resume RUN`; one killed before it journaled anything has
    nothing to resume, so it is started again under the same run id."""
    from drtool.actions.failover import RUNS
    from drtool.paths import state_dir

    runs = state_dir() / RUNS
    if not any((runs / run_id).glob("*.json")):
        return failover_command(config, site, run_id, reason)
    return [sys.executable, "-m", "drtool", "--config", str(config.path), "failover", "--site", site, "--resume",
            run_id, "--yes"]


def subprocess_launcher(config: Config, logs: Path, command: Command | None = None):
    """Start `drtool failover` as its own process (its own session: it outlives a restarted serve or an exited
    watch), through drtool/alerts/launch.py, which records in the run's decision how it ended (its exit code: 4 is
    busy, another run holds the lease). The receiver keeps answering while it runs. `command` builds the argv
    (tests stand in for the failover). Returns the launcher process's pid, recorded in the run's decision."""
    book_dir = alerts_state_dir(config)

    def launch(site: str, run_id: str, reason: str) -> int:
        logs.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "drtool.alerts.launch", "--state", str(book_dir), "--run-id", run_id, "--",
                *(command or failover_command)(config, site, run_id, reason)]
        with open(logs / f"{run_id}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=os.environ.copy())
        logging.getLogger("drtool.serve").info("started failover %s to %s (pid %d)", run_id, site, proc.pid)
        return proc.pid

    return launch


def decision_book(config: Config) -> DecisionBook:
    """The decision book in alerts' state dir, launching failovers as `drtool serve` does (subprocess_launcher, run
    logs in <state>/runs): what `drtool serve` and `drtool alerts ingest` hand alerts to."""
    base = alerts_state_dir(config)
    # Outages are claimed in the DR sites' object stores: of several receivers (one per Alertmanager replica, each
    # with its own state dir) exactly one decides each outage. A launched run that died is resumed, not restarted.
    return DecisionBook(config, base, subprocess_launcher(config, base / "runs"),
                        claims=OutageClaims.for_config(config),
                        resumer=subprocess_launcher(config, base / "runs", command=resume_command))


def real_remedies(config: Config) -> Remedies:
    """The ladder's side effects, as `drtool watch` runs them: model_server's restart action on the one service's
    container (`drtool-<model>`), the site's Nginx."""
    from drtool.actions import deploy, proxy
    from drtool.ha.instances import restart_model
    from drtool.providers.base import ssh_banner

    def restart(site: Site, instance: ServingInstance) -> None:
        deploy.restart(config, instance.host, restart_model(config, site, instance))

    return Remedies(
        restart=restart,
        drain=lambda site, instance: proxy.drain(config, site, instance),
        undrain=lambda site, instance: proxy.undrain(config, site, instance),
        reachable=lambda host: bool(ssh_banner(host.address, host.port, timeout=config.watch.timeout_s)))


def run(config: Config, out: Output, listen: str) -> None:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen {listen!r} is not ADDR:PORT")
    token = read_token(config)
    base = alerts_state_dir(config)
    book = decision_book(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    resumed = book.resume_interrupted()
    if resumed:
        out.info(f"re-launched interrupted failover(s) under their run ids: {', '.join(resumed)}")
    ladder = AlertLadder(config, book, base / "ladder", real_remedies(config))
    server = ReceiverServer((host, int(port)), book, token, ladder=ladder)
    pol = config.ha.policy
    out.info(f"drtool serve: listening on http://{listen}/alerts (policy {config.alerts.policy}, "
             f"firing_for {config.alerts.firing_for_s:.0f}s, cooldown {config.alerts.cooldown_s:.0f}s; "
             f"instance alerts: restart {pol.restart}, drain {pol.drain}, failover {pol.failover})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
