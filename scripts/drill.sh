#!/usr/bin/env bash
# `make drill`: bring the embedded lab up and run the main job on it.
# Today: the lab, then `drtool status` (Ansible over SSH to every serving host, engines read),
# a cold standby powered on and checked, then powered off again. The failover drill replaces this
# as it lands (issues #5 and #6).
set -euo pipefail
cd "$(dirname "$0")/.."
DRTOOL=.venv/bin/drtool
$DRTOOL lab up
$DRTOOL status
$DRTOOL lab power de-gpu1 on
$DRTOOL status
$DRTOOL lab power de-gpu1 off
$DRTOOL lab status
