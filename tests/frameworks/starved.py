#!/usr/bin/env python3
"""The framework that must not starve (with hog.py, tests/tests/mesos_mixed.rs): SUBSCRIBE
while another framework holds its offers; an offer must come within OFFER_WITHIN seconds of
SUBSCRIBED; LAUNCH a command task on it (`sleep 0.5`) -> TASK_RUNNING -> TASK_FINISHED."""

from common import Framework, command_task, describe_offer, fail, log, now, run, setup


def extra(p):
    p.add_argument("--offer-within", type=float, default=5.0, help="seconds from SUBSCRIBED to the first offer")


args = setup(__doc__, extra_args=extra)


def main():
    fw = Framework(args, "starved")
    fw.start()
    fw.wait_subscribed()
    t_sub = now()
    offer = fw.wait_offer(timeout=args.offer_within, what="an offer within %.1f s of SUBSCRIBED" % args.offer_within).data
    log("FIRST_OFFER_AFTER %.3f s: %s" % (now() - t_sub, describe_offer(offer)))
    fw.launch(offer, [command_task(args.task_id, offer, "sleep 0.5", cpus=0.25, mem=32)])
    fw.wait_update(args.task_id, "TASK_RUNNING", timeout=10)
    fw.wait_update(args.task_id, "TASK_FINISHED", timeout=10)
    log("task %s ran and finished" % args.task_id)
    fw.stop(failover=False)


run(main)
