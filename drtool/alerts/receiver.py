"""The Alertmanager webhook receiver: authenticates, validates and hands alerts to the DecisionBook."""

from __future__ import annotations  # PEP 563 (public), for AlertLadder, a type-checking import

import hmac
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import jsonschema

from drtool.alerts.decisions import Alert, DecisionBook, parse_time

if TYPE_CHECKING:
    from drtool.alerts.ladder import AlertLadder

log = logging.getLogger("drtool.serve")
MAX_BODY = 1 << 20  # Alertmanager batches are small; anything bigger is refused
# A refused request's body is read and thrown away before the connection closes (a client still sending would
# otherwise get a reset instead of the answer), up to this much and this long; a bigger body only gets the reset.
DRAIN_MAX = 64 << 20
DRAIN_S = 10.0

# The parts of one alert of Alertmanager's webhook payload (version 4) that decisions rely on.
ALERT_SCHEMA = {
    "type": "object",
    "required": ["status", "labels", "startsAt", "fingerprint"],
    "properties": {
        "status": {"enum": ["firing", "resolved"]},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "startsAt": {"type": "string", "format": "date-time"},
        "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"},
    },
}
# The parts of the whole payload.
WEBHOOK_SCHEMA = {
    "type": "object",
    "required": ["version", "status", "alerts"],
    "properties": {
        "version": {"const": "4"},
        "status": {"enum": ["firing", "resolved"]},
        "alerts": {"type": "array", "maxItems": 1000, "items": ALERT_SCHEMA},
    },
}


@dataclass
class WebhookAlert(Alert):
    """An Alert as Alertmanager sent it, with its annotations (the ladder names a degraded instance by its
    summary); the DecisionBook treats it as any Alert."""

    annotations: dict = field(default_factory=dict)


def _json(body: bytes):
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None


def _check(doc, schema: dict, what: str) -> None:
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        raise ValueError(f"not {what}: {'/'.join(map(str, e.path)) or '(top)'}: {e.message}")


def _alert(a: dict) -> WebhookAlert:
    """One alert of a payload, already checked against ALERT_SCHEMA."""
    try:
        starts = parse_time(a["startsAt"])
    except ValueError:
        raise ValueError(f"alert {a['fingerprint']}: startsAt {a['startsAt']!r} is not a timestamp") from None
    labels = a["labels"]
    notes = a.get("annotations")
    notes = {k: v for k, v in notes.items() if isinstance(v, str)} if isinstance(notes, dict) else {}
    return WebhookAlert(fingerprint=a["fingerprint"], status=a["status"], name=labels.get("alertname", "?"),
                        site=labels.get("site"), starts_at=starts, labels=labels, annotations=notes)


def _payload(doc) -> list[Alert]:
    _check(doc, WEBHOOK_SCHEMA, "an Alertmanager v4 webhook")
    return [_alert(a) for a in doc["alerts"]]


def parse_webhook(body: bytes) -> list[Alert]:
    """Alerts from a webhook body; ValueError naming the problem when it is not a valid payload."""
    return _payload(_json(body))


def parse_alerts(body: bytes) -> list[Alert]:
    """Alerts from an Alertmanager v4 webhook payload (checked as parse_webhook checks it) or from ONE alert as such
    a payload carries it (an object without `alerts`, e.g. what Event-Driven Ansible's alertmanager source makes of
    each alert); ValueError naming the problem otherwise."""
    doc = _json(body)
    if isinstance(doc, dict) and ("alerts" in doc or "version" in doc):
        return _payload(doc)
    _check(doc, ALERT_SCHEMA, "an Alertmanager v4 webhook payload or one of its alerts")
    return [_alert(doc)]


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], book: DecisionBook, token: str, ladder: AlertLadder | None = None):
        super().__init__(address, Handler)
        self.book = book
        self.ladder = ladder  # alerts about one instance climb its escalation ladder first (drtool/alerts/ladder.py)
        self.token = token.encode()
        self.handled = 0
        self.handled_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    server: ReceiverServer
    protocol_version = "HTTP/1.1"
    _body_read = False   # whether this request's body was read (then a refusal has nothing left to drain)

    def log_message(self, fmt, *args):  # route the stdlib's access log through logging
        log.info("%s %s", self.address_string(), fmt % args)

    def _reply(self, code: int, doc: dict, close: bool = False) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, code: int, doc: dict) -> None:
        """An error answer, and the end of the connection: no byte the client sent after it is ever read as a
        request. The body not read yet is read and thrown away first (up to DRAIN_MAX, within DRAIN_S), so a
        client still sending it reads the answer rather than a reset connection."""
        self._reply(code, doc, close=True)
        self.wfile.flush()
        unread = self._unread()
        if unread is not None and unread > DRAIN_MAX:
            return   # not worth reading: the client gets the answer or a reset, never a second request
        try:
            self.connection.shutdown(socket.SHUT_WR)   # the answer is whole: the client sees its end at once
            deadline = time.monotonic() + DRAIN_S
            while unread is None or unread > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.connection.settimeout(left)
                chunk = self.rfile.read1(1 << 16 if unread is None else min(unread, 1 << 16))
                if not chunk:
                    return   # the client stopped sending
                if unread is not None:
                    unread -= len(chunk)
        except OSError:   # timed out, reset: the connection closes either way
            return

    def _unread(self) -> int | None:
        """The request body's bytes not read yet: none once it was read, else its Content-Length (None: up to the
        client's end, for a chunked body)."""
        if self._body_read:
            return 0
        length = self._body_length()
        if length is not None:
            return length
        return None if self.headers.get("Transfer-Encoding") else 0

    def _body_length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return None
        return length if length >= 0 else None

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._body_read = False
        if self.path == "/healthz":
            self._reply(HTTPStatus.OK, {"ok": True})
        else:
            self._refuse(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        self._body_read = False
        length = self._body_length()
        if self.path != "/alerts":
            return self._refuse(HTTPStatus.NOT_FOUND, {"error": "POST alerts to /alerts"})
        auth = self.headers.get("Authorization", "")
        given = auth[7:].encode() if auth.startswith("Bearer ") else b""
        if not given or not hmac.compare_digest(given, self.server.token):
            log.warning("rejected unauthenticated webhook from %s", self.address_string())
            return self._refuse(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
        if length is None:
            return self._refuse(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
        if length > MAX_BODY:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY} bytes"})
        try:
            body = self.rfile.read(length)
            self._body_read = True
            alerts = parse_webhook(body)
        except ValueError as exc:
            log.warning("rejected malformed webhook: %s", exc)
            return self._refuse(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        ladder = self.server.ladder
        if ladder is None:
            decisions = self.server.book.handle(alerts)
        else:  # site-level alerts go to the book as before; alerts about one instance up its ladder
            mine, rest = ladder.split(alerts)
            # An alert about one instance drtool does not know must never fail a whole site over: ignored, said so.
            stray = [a for a in rest if a.labels.get("instance")]
            rest = [a for a in rest if not a.labels.get("instance")]
            decisions = self.server.book.handle(rest) if rest or not (mine or stray) else []
            if mine:
                decisions += ladder.handle(mine)
            decisions += [{"alert": a.name, "fingerprint": a.fingerprint, "action": "ignored", "why":
                           f"instance {a.labels['instance']!r} is not a serving host of a primary site"}
                          for a in stray]
        for d in decisions:
            if not d.get("duplicate"):
                log.info("alert %s (%s): %s %s", d["alert"], d["fingerprint"], d["action"], d.get("why", ""))
        self._reply(HTTPStatus.OK, {"decisions": decisions})
