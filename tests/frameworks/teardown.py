#!/usr/bin/env python3
"""Scenario 7, teardown: LAUNCH `sleep 100`; on TASK_RUNNING, driver.stop(failover=False)
(pymesos sends TEARDOWN) and exit. The Rust side then checks, through the master's native
API, that the task ends (TASK_KILLED)."""

from common import PYMESOS_ERRORS, Framework, command_task, fail, run, setup

args = setup(__doc__)


def main():
    fw = Framework(args, "teardown")
    fw.start()
    fw.wait_subscribed()
    offer = fw.wait_offer().data
    fw.launch(offer, [command_task(args.task_id, offer, "sleep 100")])
    fw.wait_update(args.task_id, "TASK_RUNNING", timeout=15)
    fw.stop(failover=False)
    # pymesos only logs a refused TEARDOWN.
    bad = [m for m in PYMESOS_ERRORS.records if "Teardown" in m or "TEARDOWN" in m]
    if bad:
        fail("TEARDOWN failed: %s" % bad)


run(main)
