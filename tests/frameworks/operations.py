#!/usr/bin/env python3
"""Offer operations this master does not carry out: one ACCEPT of the first offer with
RESERVE and CREATE (each with an operation id), UNRESERVE and DESTROY (without), a LAUNCH with
an operation id, and a plain LAUNCH of `echo ok` (refuse_seconds 0). As Mesos answers an
operation it drops: UPDATE_OPERATION_STATUS with OPERATION_ERROR (no uuid) for each dropped
operation that has an id and nothing for the others; TASK_ERROR for the task of the LAUNCH
with an id (operation feedback is not supported for LAUNCH); the plain LAUNCH runs and
finishes. Then the whole agent is offered again (nothing stays held), and RECONCILE_OPERATIONS
for the RESERVE answers OPERATION_UNKNOWN."""

import copy

from common import Framework, command_task, describe_status, fail, log, run, scalar, setup, take

args = setup(__doc__)

ROLE = "ops"


def reserved(resources):
    out = copy.deepcopy(resources)
    for r in out:
        r["reservations"] = [{"type": "DYNAMIC", "role": ROLE, "principal": "shoal-test"}]
    return out


def main():
    fw = Framework(args, "operations", role=ROLE)
    fw.start()
    fw.wait_subscribed()
    offer = fw.wait_offer().data
    agent = offer.agent_id.value
    full_cpus = scalar(offer, "cpus")
    bad = args.task_id + "-with-id"
    volume = {
        "name": "disk", "type": "SCALAR", "scalar": {"value": 16},
        "reservations": [{"type": "DYNAMIC", "role": ROLE, "principal": "shoal-test"}],
        "disk": {"persistence": {"id": "v1", "principal": "shoal-test"}, "volume": {"container_path": "data", "mode": "RW"}},
    }
    fw.accept(
        offer,
        [
            {"type": "RESERVE", "id": {"value": "op-reserve"}, "reserve": {"resources": reserved(take(offer, 0.5, 64))}},
            {"type": "CREATE", "id": {"value": "op-create"}, "create": {"volumes": [volume]}},
            {"type": "UNRESERVE", "unreserve": {"resources": reserved(take(offer, 0.5, 64))}},
            {"type": "DESTROY", "destroy": {"volumes": [volume]}},
            {"type": "LAUNCH", "id": {"value": "op-launch"}, "launch": {"task_infos": [command_task(bad, offer, "echo never")]}},
            {"type": "LAUNCH", "launch": {"task_infos": [command_task(args.task_id, offer, "echo ok")]}},
        ],
        refuse=0,
    )

    s = fw.wait_update(bad, "TASK_ERROR").data
    if "uuid" in s or s.get("source") != "SOURCE_MASTER":
        fail("TASK_ERROR should come from the master without a uuid: %s" % describe_status(s))
    fw.wait_update(args.task_id, "TASK_FINISHED", timeout=15)

    # Nothing stays held: the whole agent comes back in an offer.
    ev = fw.wait_for(
        "an offer of the whole agent %s" % agent,
        lambda e: e.kind == "offer" and e.data.agent_id.value == agent and scalar(e.data, "cpus") >= full_cpus,
        timeout=10,
    )
    fw.decline(ev.data, refuse=30)

    # By now: one OPERATION_ERROR per dropped operation with an id, nothing for the others.
    seen = [u.get("operation_id", {}).get("value") for u in fw.operation_updates]
    if sorted(seen) != ["op-create", "op-reserve"]:
        fail("operation updates for %s, wanted one each for op-create and op-reserve" % seen)
    for u in fw.operation_updates:
        if u.get("state") != "OPERATION_ERROR" or "uuid" in u:
            fail("wanted OPERATION_ERROR without uuid, got %s" % dict(u))
    log("dropped operations answered: %s" % sorted(seen))

    log("RECONCILE_OPERATIONS op-reserve")
    fw.driver.reconcileOperations([{"operation_id": {"value": "op-reserve"}, "agent_id": {"value": agent}}])
    ev = fw.wait_for(
        "the reconciliation of op-reserve",
        lambda e: e.kind == "operation" and len(fw.operation_updates) > 2,
        timeout=10,
    )
    if ev.data.get("state") != "OPERATION_UNKNOWN" or ev.data.get("operation_id", {}).get("value") != "op-reserve":
        fail("reconciliation answered %s" % dict(ev.data))
    fw.stop(failover=False)


run(main)
