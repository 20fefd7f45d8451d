#!/usr/bin/env python3
"""Scenario 6, framework failover, in two processes:

  failover.py MASTER launch STATE_FILE --task-id T
      SUBSCRIBE with checkpoint and failover_timeout=30, LAUNCH `sleep 100` (T), wait for
      TASK_RUNNING, write {framework_id, task_id, agent_id} to STATE_FILE, then
      driver.stop(failover=True) (no TEARDOWN) and exit.
  failover.py MASTER resume STATE_FILE
      SUBSCRIBE again with the SAME framework id: the master must answer with that id;
      explicit RECONCILE of T -> TASK_RUNNING; then KILL T -> TASK_KILLED, and TEARDOWN."""

import json

from common import Framework, command_task, fail, log, run, setup


def extra(p):
    p.add_argument("phase", choices=["launch", "resume"])
    p.add_argument("state_file")
    p.add_argument("--failover-timeout", type=float, default=30.0)


args = setup(__doc__, extra_args=extra)


def launch():
    fw = Framework(args, "failover", checkpoint=True, failover_timeout=args.failover_timeout)
    fw.start()
    fid = fw.wait_subscribed().data
    offer = fw.wait_offer().data
    fw.launch(offer, [command_task(args.task_id, offer, "sleep 100")])
    s = fw.wait_update(args.task_id, "TASK_RUNNING", timeout=15).data
    state = {"framework_id": fid, "task_id": args.task_id, "agent_id": s.agent_id.value}
    with open(args.state_file, "w") as f:
        json.dump(state, f)
    log("wrote %s: %s" % (args.state_file, state))
    fw.stop(failover=True)


def resume():
    with open(args.state_file) as f:
        state = json.load(f)
    fid, tid = state["framework_id"], state["task_id"]
    fw = Framework(args, "failover", checkpoint=True, failover_timeout=args.failover_timeout, framework_id=fid)
    fw.start()
    got = fw.wait_subscribed().data
    if got != fid:
        fail("re-subscribed with framework id %s, the master answered %s" % (fid, got))
    log("re-subscribed as %s" % fid)

    fw.reconcile([tid])
    s = fw.wait_for(
        "a reconciliation answer for %s" % tid,
        lambda e: e.kind == "update" and e.data.task_id.value == tid,
        timeout=10,
    ).data
    if s.state != "TASK_RUNNING":
        fail("after failover, task %s is %s (reason %s, message %r)" % (tid, s.state, s.get("reason"), s.get("message")))
    log("task %s still TASK_RUNNING after failover: OK" % tid)

    fw.kill(tid)
    fw.wait_update(tid, "TASK_KILLED", timeout=10)
    fw.stop(failover=False)


run(launch if args.phase == "launch" else resume)
