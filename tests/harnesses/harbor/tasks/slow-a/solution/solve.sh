#!/bin/bash
# /logs/agent is the trial's agent dir on the host
# (jobs/<job-name>/<trial>/agent/solution-started): a test waits for it,
# then interrupts the harness while the task still runs. Harbor bind-mounts
# it only with `--ek auto_mounting=true`; else it copies it out at the end.
date -u +%FT%TZ > /logs/agent/solution-started
sleep 600
echo "done" > /app/slow-a.txt
