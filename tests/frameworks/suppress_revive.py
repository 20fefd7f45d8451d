#!/usr/bin/env python3
"""Scenario 3, suppress and revive.

First a control: an offer declined without a filter (refuse_seconds=0) is offered again.
Then SUPPRESS, DECLINE that offer (again refuse_seconds=0): no offer may come for
--quiet (1 s); then REVIVE: an offer comes (within 5 s)."""

from common import Framework, fail, log, now, run, setup


def extra(p):
    p.add_argument("--quiet", type=float, default=1.0, help="seconds without offers after SUPPRESS")


args = setup(__doc__, extra_args=extra)


def main():
    fw = Framework(args, "suppress")
    fw.start()
    fw.wait_subscribed()
    offer = fw.wait_offer().data

    t = now()
    fw.decline(offer, refuse=0)
    offer = fw.wait_offer(timeout=5, what="the offer again after a DECLINE with refuse_seconds=0").data
    log("control: offered again %.3f s after the DECLINE" % (now() - t))

    log("SUPPRESS")
    fw.driver.suppressOffers()
    t_suppress = now()
    fw.decline(offer, refuse=0)
    until = t_suppress + args.quiet
    while now() < until:
        ev = fw.next_event(until - now())
        if ev is None:
            break
        if ev.kind == "offer":
            fail("offer %s arrived %.3f s after SUPPRESS" % (ev.data.id.value, ev.t - t_suppress))
        fw.handle_other(ev, "silence")
    log("no offer for %.3f s after SUPPRESS: OK" % (now() - t_suppress))

    log("REVIVE")
    t_revive = now()
    fw.driver.reviveOffers()
    ev = fw.wait_offer(timeout=5, what="an offer after REVIVE")
    log("offer %.3f s after REVIVE: OK" % (ev.t - t_revive))
    fw.decline(ev.data)
    fw.stop(failover=False)


run(main)
