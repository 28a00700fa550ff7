#!/bin/bash
# The same as sweep.sbatch without a scheduler: WORKERS worker processes and the driver, on one study.
# Run it on one machine, or start the `--worker` line by hand (ssh, tmux) on each other machine with
# the same options: they share nothing but the database and the sweep folder (--out, which must be on a
# file system every machine mounts).
#
#   export LBFOOD_STORAGE=postgresql://USER:PASSWORD@DBHOST:5432/lbfood
#   examples/slurm/sweep-loop.sh 3 --from runs/cifar100 --out /shared/sweeps/cifar100 --lambda 0.5,1,2
set -euo pipefail
: "${LBFOOD_STORAGE:?set LBFOOD_STORAGE=postgresql://USER:PASSWORD@HOST:PORT/DATABASE}"
LBFOOD=${LBFOOD:-lbfood}
workers=${1:?usage: sweep-loop.sh WORKERS [lbfood sweep options...]}
shift

pids=()
for _ in $(seq 1 "$workers"); do
    $LBFOOD sweep --storage "$LBFOOD_STORAGE" "$@" --worker &
    pids+=($!)
done
status=0
$LBFOOD sweep --storage "$LBFOOD_STORAGE" "$@" || status=$?  # the driver: selects once every trial is done
for p in "${pids[@]}"; do
    wait "$p" || status=$?
done
exit "$status"
