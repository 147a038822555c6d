#!/usr/bin/env bash
# `make drill`: the main job on the embedded lab, end to end, with real parts only.
#   1. a fresh lab (two sites, standbys cold);
#   2. production as an operator sets it up: image built offline and pushed to both registries, weights
#      snapshotted on the serving host and copied to the DR store, the version registered (canary computed by
#      running the image) and promoted, the primary brought to it;
#   3. the game day: `drtool drill --scenario primary-down`. prod-west's serving hosts go down; Prometheus
#      notices, Alertmanager posts to `drtool serve`, the failover brings the model back at dr-east behind the
#      drill record (verified before DNS moves), Locust loads it; then cleanup fails back and compares
#      production with what it was before.
# Prints the drill's summary (steps, RTO, RPO, checks) and the path of report.html. Reports: $DRILL_DIR.
#
# SCENARIO=region-down (`make drill SCENARIO=region-down`): the region game day instead. After step 2, the five
# other services of the lab's six-service site are set up with drtool's own commands (python -m drtool.lab.fleet
# prints each), then every host of prod-west goes down at once and every service must come back at dr-east.
set -euo pipefail
cd "$(dirname "$0")/.."
DRTOOL=${DRTOOL:-.venv/bin/drtool}
PY=.venv/bin/python
LAB=${DRTOOL_LAB_DIR:-/var/lib/drtool-lab}
MODEL=asr-demo
SCENARIO=${SCENARIO:-primary-down}
case "$SCENARIO" in
  primary-down|region-down) ;;
  *) echo "drill.sh: SCENARIO=$SCENARIO: use primary-down (default) or region-down; other scenarios:" \
       "drtool drill --scenario NAME on a lab that make drill set up" >&2; exit 2 ;;
esac
VERSION=${DRILL_VERSION:-1.0.0}
DRILL_DIR=${DRILL_DIR:-reports/drill-$(date -u +%Y%m%dT%H%M%SZ)}
export DRTOOL_STATE_DIR=${DRTOOL_STATE_DIR:-$PWD/$DRILL_DIR/state}
mkdir -p "$DRILL_DIR"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
json() { "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"; }

say "1. Lab: down (a clean slate), then up"
$DRTOOL lab down
$DRTOOL lab up

say "2. Production: build and push the serving image"
$DRTOOL --json image build --model $MODEL --version "$VERSION" --push >"$DRILL_DIR/image.json"
IMAGE=$(json 'd["pushed"]["10.77.0.10:5000"]' <"$DRILL_DIR/image.json")
echo "image: $IMAGE"

say "2. Production: weights on pw-gpu1 and pw-gpu2, snapshotted there and copied to dr-east"
for host in pw-gpu1 pw-gpu2; do
  "$PY" -m drtool.model.demo write "$LAB/hosts/$host/srv/models/$MODEL" --size-mb 40 --model $MODEL \
    --version "$VERSION" --overwrite >/dev/null
done
$DRTOOL --json backup >"$DRILL_DIR/backup.json"
SNAPSHOT=$(json 'd["snapshots"][0]["id"]' <"$DRILL_DIR/backup.json")
echo "snapshot: $SNAPSHOT"

say "2. Production: register (canary), promote, serve on the primary"
$DRTOOL registry register --model $MODEL --version "$VERSION" --snapshot "$SNAPSHOT" --image "$IMAGE"
$DRTOOL registry promote $MODEL "$VERSION" --reason "make drill"
$DRTOOL failback --site prod-west --yes >/dev/null   # both GPU hosts at the production version, Nginx in front
$DRTOOL registry verify --site dr-east

CONFIG=()
if [ "$SCENARIO" = region-down ]; then
  say "2. Production: the five other services of the six-service site, with drtool's own commands"
  "$PY" -m drtool.lab.fleet >"$DRILL_DIR/fleet.json"
  CONFIG=(--config "$LAB/drtool-fleet.yaml")
  say "3. Game day: the region-down drill (every host of prod-west down at once), then cleanup"
else
  say "3. Game day: the primary-down drill (Prometheus -> Alertmanager -> drtool serve -> failover), then cleanup"
fi
set +e
$DRTOOL "${CONFIG[@]}" drill --site dr-east --scenario "$SCENARIO" --report "$DRILL_DIR"
rc=$?
set -e
echo "production record: $(dig @10.77.0.2 model.drlab.test A +short)   drill record: $(dig @10.77.0.2 drill.model.drlab.test A +short)"

say "Done (exit $rc): open $DRILL_DIR/report.html; JSON and JUnit beside it; journals in $DRTOOL_STATE_DIR/runs"
exit $rc
