#!/usr/bin/env python3
"""Offer hog (with starved.py, tests/tests/mesos_mixed.rs): SUBSCRIBE, then hold every offer
and never answer one, until STOP_FILE exists. Offers outstanding = received - rescinded;
more than CAP at any moment fails at once. READY_FILE is written once the first offer is
held. Ends with `MAX_OUTSTANDING n` and a TEARDOWN (which releases the offers)."""

import os
import time

from common import Framework, fail, log, now, run, setup


def extra(p):
    p.add_argument("--cap", type=int, required=True, help="most offers the master may leave with us")
    p.add_argument("--ready-file", required=True)
    p.add_argument("--stop-file", required=True)


args = setup(__doc__, default_deadline=40.0, extra_args=extra)


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def main():
    fw = Framework(args, "hog")
    fw.start()
    fw.wait_subscribed()
    held = set()
    most = 0
    while not os.path.exists(args.stop_file):
        ev = fw.next_event(0.05)
        if ev is None:
            continue
        if ev.kind == "offer":
            held.add(ev.data.id.value)
            most = max(most, len(held))
            log("HOLDING %d offers (most so far %d)" % (len(held), most))
            if len(held) > args.cap:
                fail("holding %d offers, more than the cap of %d: %s" % (len(held), args.cap, sorted(held)))
            if len(held) == 1 and not os.path.exists(args.ready_file):
                write(args.ready_file, "%.3f\n" % now())
        elif ev.kind == "rescind":
            held.discard(ev.data)
            log("HOLDING %d offers after a RESCIND" % len(held))
        elif ev.kind == "disconnected" and fw.subscribed:
            fail("disconnected from the master")
    log("MAX_OUTSTANDING %d" % most)
    if most == 0:
        fail("never got an offer")
    fw.stop(failover=False)


run(main)
