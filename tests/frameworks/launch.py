#!/usr/bin/env python3
"""Scenario 1, launch: SUBSCRIBE -> an offer -> LAUNCH a command task (`echo hello; sleep 1`)
-> TASK_RUNNING -> TASK_FINISHED, acknowledging each update explicitly (each must carry a
uuid); then no update of the task may come again within 1.5 s (acknowledgements honoured)."""

from common import Framework, command_task, describe_status, fail, log, now, run, scalar, setup

args = setup(__doc__)


def main():
    fw = Framework(args, "launch")
    fw.start()
    fid = fw.wait_subscribed().data
    ev = fw.wait_offer()
    offer = ev.data
    if offer.get("framework_id", {}).get("value") not in (None, fid):
        fail("offer for framework %s, we are %s" % (offer.framework_id.value, fid))
    for name in ("cpus", "mem"):
        if scalar(offer, name) <= 0:
            fail("offer without %s" % name)
    fw.launch(offer, [command_task(args.task_id, offer, "echo hello; sleep 1")])

    for state in ("TASK_RUNNING", "TASK_FINISHED"):
        s = fw.wait_update(args.task_id, state, timeout=15).data
        if "uuid" not in s:
            fail("%s update without uuid (nothing to acknowledge): %s" % (state, describe_status(s)))
        if not any(a[0] == args.task_id and a[1] == state for a in fw.acked):
            fail("%s was not acknowledged" % state)

    # An acknowledged update is not sent again (the test master resends unacknowledged
    # ones every 500 ms): watch for 1.5 s; a resend racing the ACKNOWLEDGE (within 0.3 s)
    # is only noted.
    t_ack = now()
    until = t_ack + 1.5
    while now() < until:
        ev = fw.next_event(until - now())
        if ev is None:
            break
        if ev.kind == "update" and ev.data.task_id.value == args.task_id:
            if ev.t - t_ack < 0.3:
                log("note: a resend %.3f s after the ACKNOWLEDGE (raced it)" % (ev.t - t_ack))
                continue
            fail("update %.3f s after TASK_FINISHED was acknowledged: %s" % (ev.t - t_ack, describe_status(ev.data)))
        fw.handle_other(ev, "nothing")
    log("framework %s: task %s ran and finished" % (fid, args.task_id))
    fw.stop(failover=False)


run(main)
