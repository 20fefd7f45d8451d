#!/usr/bin/env python3
"""Scenario 4, kill: LAUNCH `sleep 100`; on TASK_RUNNING, KILL it -> TASK_KILLED."""

from common import Framework, command_task, log, now, run, setup

args = setup(__doc__)


def main():
    fw = Framework(args, "kill")
    fw.start()
    fw.wait_subscribed()
    offer = fw.wait_offer().data
    fw.launch(offer, [command_task(args.task_id, offer, "sleep 100")])
    fw.wait_update(args.task_id, "TASK_RUNNING", timeout=15)
    t = now()
    fw.kill(args.task_id)
    fw.wait_update(args.task_id, "TASK_KILLED", timeout=10)
    log("TASK_KILLED %.3f s after KILL" % (now() - t))
    fw.stop(failover=False)


run(main)
