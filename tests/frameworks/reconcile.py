#!/usr/bin/env python3
"""Scenario 5, reconcile: LAUNCH two `sleep 100` tasks (A = --task-id, B = A-b) and one that
ends at once (C = A-c); once A and B run and C finished:
  * explicit RECONCILE of [A] -> an update for A, TASK_RUNNING, reason REASON_RECONCILIATION
    (and none for B);
  * implicit RECONCILE ([]) -> such updates for A and B (C, acknowledged terminal, may only
    be reported terminal);
then KILL A and B."""

from common import TERMINAL, Framework, command_task, describe_status, fail, log, run, setup

args = setup(__doc__)
RECON = "REASON_RECONCILIATION"


def main():
    a, b, c = args.task_id, args.task_id + "-b", args.task_id + "-c"
    fw = Framework(args, "reconcile")
    fw.start()
    fw.wait_subscribed()
    offer = fw.wait_offer().data
    fw.launch(
        offer,
        [
            command_task(a, offer, "sleep 100"),
            command_task(b, offer, "sleep 100"),
            command_task(c, offer, "true"),
        ],
    )
    fw.wait_updates({a: "TASK_RUNNING", b: "TASK_RUNNING", c: "TASK_FINISHED"}, timeout=15)

    # Explicit.
    fw.reconcile([a])

    def recon_update(e):
        return e.kind == "update" and e.data.get("reason") == RECON

    while True:
        ev = fw.wait_for("a reconciliation update for %s" % a, recon_update, timeout=5)
        s = ev.data
        tid = s.task_id.value
        if tid == a:
            if s.state != "TASK_RUNNING":
                fail("explicit reconciliation of %s says %s" % (a, describe_status(s)))
            break
        fail("explicit reconciliation of [%s] answered for %s: %s" % (a, tid, describe_status(s)))
    log("explicit reconciliation: OK")

    # Implicit.
    fw.reconcile([])
    seen = set()
    while seen != {a, b}:
        ev = fw.wait_for("reconciliation updates for %s" % sorted({a, b} - seen), recon_update, timeout=5)
        s = ev.data
        tid = s.task_id.value
        if tid in (a, b):
            if s.state != "TASK_RUNNING":
                fail("implicit reconciliation says %s" % describe_status(s))
            seen.add(tid)
        elif tid == c:
            if s.state not in TERMINAL:
                fail("implicit reconciliation reports the finished task %s as %s" % (c, s.state))
            log("note: implicit reconciliation also reported the finished (acknowledged) task %s" % c)
        else:
            fail("implicit reconciliation reported a task we never launched: %s" % describe_status(s))
    log("implicit reconciliation: OK")

    for t in (a, b):
        fw.kill(t)
    fw.wait_updates({a: "TASK_KILLED", b: "TASK_KILLED"}, timeout=10)
    fw.stop(failover=False)


run(main)
