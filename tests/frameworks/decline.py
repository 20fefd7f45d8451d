#!/usr/bin/env python3
"""Scenario 2, decline with a filter: DECLINE the first offer with refuse_seconds=REFUSE
(1.5); the same agent must not be offered again to this framework before REFUSE seconds
have passed since the DECLINE was sent, and must be offered again after (within 10 s)."""

from common import Framework, fail, log, now, run, setup


def extra(p):
    p.add_argument("--refuse", type=float, default=1.5, help="refuse_seconds of the DECLINE")


args = setup(__doc__, extra_args=extra)


def main():
    fw = Framework(args, "decline")
    fw.start()
    fw.wait_subscribed()
    offer = fw.wait_offer().data
    agent = offer.agent_id.value
    t0 = now()
    fw.decline(offer, refuse=args.refuse)
    log("declined at %.3f (call returned after %.3f s)" % (t0, now() - t0))

    ev = fw.wait_for(
        "a new offer from agent %s" % agent,
        lambda e: e.kind == "offer" and e.data.agent_id.value == agent,
        timeout=args.refuse + 10,
    )
    dt = ev.t - t0
    if dt < args.refuse:
        fail("agent %s offered again %.3f s after the DECLINE with refuse_seconds=%g" % (agent, dt, args.refuse))
    log("agent %s offered again %.3f s after the DECLINE (refuse_seconds=%g): OK" % (agent, dt, args.refuse))
    fw.decline(ev.data)
    fw.stop(failover=False)


run(main)
