#!/usr/bin/env python3
"""An offer-based framework sharing one small agent with a native scheduler
(tests/tests/mesos_mixed.rs).

Phase 1: the first offer is held HOLD seconds without an answer: HOLD_FILE is written when
it arrives (the Rust side then claims the agent natively and must be refused), RELEASED_FILE
just before it is answered (ACCEPT with one task).
Phase 2, DURATION seconds: every offer is accepted at once with up to PER_OFFER tasks
`sleep 0.2` (cpus CPUS, mem MEM each) and refuse_seconds REFUSE (the agent is left to the
native scheduler meanwhile).
Then offers are declined, and every task launched must end TASK_FINISHED (a task refused or
lost to a double-booking fails the run). Ends with `LAUNCHED n FINISHED n`."""

import os
import time

from common import TERMINAL, Framework, command_task, describe_status, fail, log, now, run, scalar, setup


def extra(p):
    p.add_argument("--hold-file", required=True)
    p.add_argument("--released-file", required=True)
    p.add_argument("--hold", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--per-offer", type=int, default=2)
    p.add_argument("--cpus", type=float, default=0.25)
    p.add_argument("--mem", type=float, default=32)
    p.add_argument("--refuse", type=float, default=0.3)


args = setup(__doc__, default_deadline=40.0, extra_args=extra)


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


class Busy(object):
    def __init__(self):
        self.fw = Framework(args, "busy")
        self.launched = []
        self.ended = {}  # task id -> terminal state

    def launch(self, offer, n):
        fits = int(min(scalar(offer, "cpus") / args.cpus, scalar(offer, "mem") / args.mem) + 1e-9)
        n = min(n, fits)
        tasks = []
        for _ in range(n):
            tid = "%s-%d" % (args.task_id, len(self.launched))
            self.launched.append(tid)
            tasks.append(command_task(tid, offer, "sleep 0.2", cpus=args.cpus, mem=args.mem))
        if not tasks:
            self.fw.decline(offer, refuse=args.refuse)
            return
        log("ACCEPT offer %s: LAUNCH %s (refuse %g s)" % (offer.id.value, [t["task_id"]["value"] for t in tasks], args.refuse))
        self.fw.driver.launchTasks(offer.id, tasks, {"refuse_seconds": args.refuse})

    def other(self, ev, what, offers):
        if ev.kind == "offer":
            if offers == "launch":
                self.launch(ev.data, args.per_offer)
            else:
                self.fw.decline(ev.data, refuse=60)
        elif ev.kind == "update":
            s = ev.data
            if s.state in TERMINAL:
                self.ended[s.task_id.value] = s.state
                if s.state != "TASK_FINISHED":
                    fail("task %s ended %s: %s" % (s.task_id.value, s.state, describe_status(s)))
        elif ev.kind == "rescind":
            fail("offer %s rescinded (no offer timeout is set)" % ev.data)
        elif ev.kind == "disconnected" and self.fw.subscribed:
            fail("disconnected from the master during %s" % what)

    def main(self):
        fw = self.fw
        fw.start()
        fw.wait_subscribed()
        offer = fw.wait_offer(timeout=10).data
        log("HOLDING offer %s for %.1f s" % (offer.id.value, args.hold))
        write(args.hold_file, "%s\n" % offer.id.value)
        time.sleep(args.hold)
        write(args.released_file, "%.3f\n" % now())
        self.launch(offer, 1)

        until = now() + args.duration
        while now() < until:
            ev = fw.next_event(until - now())
            if ev is not None:
                self.other(ev, "phase 2", "launch")
        log("phase 2 over: %d tasks launched; draining" % len(self.launched))
        until = now() + 20
        while any(t not in self.ended for t in self.launched):
            if now() > until:
                fail("tasks not ended within 20 s: %s" % [t for t in self.launched if t not in self.ended])
            ev = fw.next_event(0.1)
            if ev is not None:
                self.other(ev, "the drain", "decline")
        log("LAUNCHED %d FINISHED %d" % (len(self.launched), sum(1 for s in self.ended.values() if s == "TASK_FINISHED")))
        if len(self.launched) < 2:
            fail("only %d tasks launched" % len(self.launched))
        fw.stop(failover=False)


run(Busy().main)
