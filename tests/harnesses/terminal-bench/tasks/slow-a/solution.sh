#!/bin/bash
# /logs is the trial's sessions dir on the host
# (runs/<run-id>/slow-a/<trial>/sessions/solution-started): a test waits for it,
# then interrupts the harness while the task still runs.
date -u +%FT%TZ > /logs/solution-started
sleep 600
echo "done" > /app/slow-a.txt
