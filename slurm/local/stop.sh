#!/bin/bash
# Stop the daemons start.sh started: SIGTERM each PID from its pidfile, wait until it exits.
S=${SLURM_STATE_DIR:-/var/spool/slurm-local}
for f in $S/run/slurmd.pid $S/run/slurmctld.pid /run/munge/munged.pid; do
  [ -s $f ] || continue; p=$(cat $f)
  kill -TERM $p 2>/dev/null && for i in $(seq 100); do kill -0 $p 2>/dev/null || break; sleep 0.2; done
  rm -f $f
done
