"""Where drtool finds its Ansible content (playbooks/, roles/) and writes its local state."""

import os
from pathlib import Path


def project_root() -> Path:
    """The tree holding playbooks/ and roles/: $DRTOOL_HOME, else the checkout this package lives in."""
    env = os.environ.get("DRTOOL_HOME")
    root = Path(env) if env else Path(__file__).resolve().parent.parent
    if not (root / "playbooks").is_dir():
        from drtool.errors import UsageError

        raise UsageError(f"no playbooks/ directory under {root}",
                         hint="set DRTOOL_HOME to the drtool checkout that holds playbooks/ and roles/")
    return root


def playbooks_dir() -> Path:
    return project_root() / "playbooks"


def roles_dir() -> Path:
    return project_root() / "roles"


def state_dir() -> Path:
    """drtool's own state (run journals, alert decisions): $DRTOOL_STATE_DIR, else /var/lib/drtool for root,
    else ~/.local/state/drtool."""
    env = os.environ.get("DRTOOL_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/drtool")
    return Path.home() / ".local" / "state" / "drtool"
