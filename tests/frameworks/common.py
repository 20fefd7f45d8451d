"""Shared pieces of the pymesos test frameworks in this directory.

Each framework is a short, linear script for one scenario of the Mesos v1 scheduler API. It
uses pymesos's public API only: a `MesosSchedulerDriver` whose `Scheduler` callbacks (run on
pymesos's IO thread) print what they see and put it on a queue; the script's main thread
reads the queue and checks what the scenario expects.

Conventions (the Rust harness, tests/tests/mesos.rs, relies on them):
  * argv: `SCRIPT MASTER [--task-id ID] [--deadline SECONDS] [scenario options]`, where MASTER
    is `127.0.0.1:PORT` (an `http://` prefix is accepted and dropped);
  * exit 0 on success; 1 with a `FAIL: ...` line on a failed check or an error; 2 when the
    overall deadline (a watchdog thread) passes;
  * every line is timestamped (seconds since start) and flushed at once.

Status updates are acknowledged explicitly (the driver runs with implicit_acknowledgements
False): each update that carries a uuid is acknowledged as soon as it arrives, before the
script sees it. Offers the script is not waiting for are declined.
"""

import argparse
import copy
import getpass
import logging
import os
import queue
import sys
import threading
import time
import traceback
import uuid

from pymesos import MesosSchedulerDriver, Scheduler

T0 = time.monotonic()

TERMINAL = {
    "TASK_FINISHED",
    "TASK_FAILED",
    "TASK_KILLED",
    "TASK_LOST",
    "TASK_ERROR",
    "TASK_DROPPED",
    "TASK_GONE",
    "TASK_GONE_BY_OPERATOR",
    "TASK_UNKNOWN",
}


def now():
    """Seconds since the script started (monotonic)."""
    return time.monotonic() - T0


def log(msg):
    sys.stdout.write("[%7.3f] %s\n" % (now(), msg))
    sys.stdout.flush()


def fail(msg, code=1):
    """Ends the process at once (from any thread) with a clear message."""
    log("FAIL: %s" % msg)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _ErrorRecorder(logging.Handler):
    """Keeps pymesos's ERROR records: some failures (e.g. a refused TEARDOWN) are only logged."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


PYMESOS_ERRORS = _ErrorRecorder()


def setup(description, default_deadline=30.0, extra_args=None):
    """Parses argv, configures logging and starts the overall-deadline watchdog."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("master", help="the master's address, 127.0.0.1:PORT")
    p.add_argument("--task-id", default=None, help="id of the (first) task this framework launches")
    p.add_argument("--deadline", type=float, default=default_deadline, help="overall deadline, seconds")
    if extra_args:
        extra_args(p)
    args = p.parse_args()
    for prefix in ("http://", "https://"):
        if args.master.startswith(prefix):
            args.master = args.master[len(prefix):]
    args.master = args.master.rstrip("/")
    if not args.task_id:
        args.task_id = "t-%s" % uuid.uuid4().hex[:10]

    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="[pymesos %(levelname)s %(name)s] %(message)s",
    )
    logging.getLogger("pymesos").addHandler(PYMESOS_ERRORS)

    name = os.path.basename(sys.argv[0])

    def fire():
        fail("%s: overall deadline of %.0f s passed" % (name, args.deadline), code=2)

    t = threading.Timer(args.deadline, fire)
    t.daemon = True
    t.start()
    log("%s: master %s, task id %s, deadline %.0f s" % (name, args.master, args.task_id, args.deadline))
    return args


def run(main):
    """Runs `main()`; exits 0 when it returns, 1 (with the traceback) when it raises.

    An exception on pymesos's IO thread (e.g. a refused SUBSCRIBE) reaches the main thread as
    a re-raised exception or KeyboardInterrupt: it is reported the same way.
    """
    try:
        main()
    except BaseException as e:  # noqa: B902 - everything is a failure here
        traceback.print_exc(file=sys.stdout)
        fail("%s: %s" % (type(e).__name__, e))
    log("OK")
    sys.stdout.flush()
    os._exit(0)


# ---------------------------------------------------------------- offers and tasks


def scalar(offer, name):
    return sum(r.scalar.value for r in offer.resources if r.name == name and "scalar" in r)


def ranges(offer, name):
    out = []
    for r in offer.resources:
        if r.name == name and "ranges" in r:
            out += [(g.begin, g.end) for g in r.ranges.range]
    return out


def describe_offer(offer):
    parts = []
    for r in offer.resources:
        if "scalar" in r:
            parts.append("%s:%g" % (r.name, r.scalar.value))
        elif "ranges" in r:
            parts.append("%s:[%s]" % (r.name, ",".join("%d-%d" % (g.begin, g.end) for g in r.ranges.range)))
        else:
            parts.append("%s:?" % r.name)
        if r.get("role") not in (None, "*") or "allocation_info" in r or "reservations" in r:
            parts[-1] += "(role=%s alloc=%s)" % (r.get("role"), r.get("allocation_info", {}).get("role"))
    return "offer %s agent %s host %s: %s" % (
        offer.id.value,
        offer.agent_id.value,
        offer.get("hostname"),
        " ".join(parts),
    )


def take(offer, cpus, mem, ports=()):
    """Task resources carved out of the offer's own resource objects (so that role,
    allocation_info and reservations are carried over as Mesos frameworks do)."""
    out = []
    for name, amount in (("cpus", cpus), ("mem", mem)):
        src = next((r for r in offer.resources if r.name == name and "scalar" in r and r.scalar.value >= amount), None)
        if src is None:
            fail("offer %s lacks %s:%g (%s)" % (offer.id.value, name, amount, describe_offer(offer)))
        r = copy.deepcopy(src.to_dict())
        r["scalar"] = {"value": amount}
        out.append(r)
    if ports:
        src = next((r for r in offer.resources if r.name == "ports" and "ranges" in r), None)
        offered = ranges(offer, "ports")
        for p in ports:
            if not any(b <= p <= e for b, e in offered):
                fail("offer %s lacks port %d (%s)" % (offer.id.value, p, describe_offer(offer)))
        r = copy.deepcopy(src.to_dict())
        r["ranges"] = {"range": [{"begin": p, "end": p} for p in ports]}
        out.append(r)
    return out


def command_task(task_id, offer, shell, cpus=0.1, mem=32, ports=()):
    return {
        "name": task_id,
        "task_id": {"value": task_id},
        "agent_id": {"value": offer.agent_id.value},
        "resources": take(offer, cpus, mem, ports),
        "command": {"value": shell, "shell": True},
    }


def task_id_of(status):
    return status.task_id.value


def describe_status(s):
    return "%s %s reason=%s source=%s uuid=%s message=%r agent=%s" % (
        s.task_id.value,
        s.state,
        s.get("reason") or "-",
        s.get("source") or "-",
        "yes" if "uuid" in s else "no",
        s.get("message") or "",
        s.agent_id.value if "agent_id" in s else "-",
    )


# ---------------------------------------------------------------- the framework


class Event(object):
    def __init__(self, kind, data):
        self.kind = kind
        self.data = data
        self.t = now()

    def __repr__(self):
        return "<%s at %.3f>" % (self.kind, self.t)


class Framework(Scheduler):
    """A scheduler whose callbacks only record; see the module docs."""

    def __init__(self, args, name, role="*", checkpoint=False, failover_timeout=None, framework_id=None):
        self.args = args
        self.events = queue.Queue()
        self.stopping = False
        self.framework_id = framework_id
        self.subscribed = False
        self.heartbeats = 0
        self.acked = []  # (task id, state, uuid) of every acknowledgement sent
        self.operation_updates = []  # every UPDATE_OPERATION_STATUS status, in order
        info = {
            "user": getpass.getuser(),
            "name": "shoal-test-%s" % name,
            "role": role,
            "checkpoint": checkpoint,
        }
        if failover_timeout is not None:
            info["failover_timeout"] = failover_timeout
        if framework_id is not None:
            info["id"] = {"value": framework_id}
        self.info = info
        self.driver = MesosSchedulerDriver(
            self,
            info,
            args.master,
            use_addict=True,
            implicit_acknowledgements=False,
        )

    # -- callbacks (pymesos IO thread) --

    def _push(self, kind, data=None):
        self.events.put(Event(kind, data))

    def registered(self, driver, frameworkId, masterInfo):
        log("SUBSCRIBED (registered) framework %s, master %s" % (frameworkId.value, dict(masterInfo)))
        self.framework_id = frameworkId.value
        self.subscribed = True
        self._push("registered", frameworkId.value)

    def reregistered(self, driver, masterInfo):
        log("SUBSCRIBED (re-registered) framework %s, master %s" % (driver.framework_id, dict(masterInfo)))
        self.framework_id = driver.framework_id
        self.subscribed = True
        self._push("reregistered", driver.framework_id)

    def disconnected(self, driver):
        log("disconnected from the master%s" % (" (stopping)" if self.stopping else ""))
        self._push("disconnected")

    def processHeartBeat(self, driver):
        self.heartbeats += 1
        if self.heartbeats == 1:
            log("first HEARTBEAT")

    def resourceOffers(self, driver, offers):
        for o in offers:
            log("OFFERS: %s" % describe_offer(o))
            self._push("offer", o)

    def inverseOffers(self, driver, offers):
        for o in offers:
            log("INVERSE_OFFERS: %s" % (o,))

    def offerRescinded(self, driver, offerId):
        log("RESCIND offer %s" % offerId.value)
        self._push("rescind", offerId.value)

    def statusUpdate(self, driver, status):
        log("UPDATE %s" % describe_status(status))
        if "uuid" in status:
            try:
                driver.acknowledgeStatusUpdate(status)
            except Exception as e:  # the master refused the ACKNOWLEDGE
                traceback.print_exc(file=sys.stdout)
                fail("ACKNOWLEDGE of %s %s refused: %s" % (status.task_id.value, status.state, e))
            self.acked.append((status.task_id.value, status.state, status.uuid))
            log("  acknowledged %s %s" % (status.task_id.value, status.state))
        self._push("update", status)

    def operationStatusUpdate(self, driver, status):
        log(
            "UPDATE_OPERATION_STATUS %s %s uuid=%s message=%r"
            % (status.get("operation_id", {}).get("value"), status.get("state"), "yes" if "uuid" in status else "no", status.get("message") or "")
        )
        self.operation_updates.append(status)
        self._push("operation", status)

    def error(self, driver, message):
        fail("ERROR event from the master: %s" % message)

    def slaveLost(self, driver, agentId):
        log("FAILURE: agent %s lost" % agentId.value)
        self._push("agent_lost", agentId.value)

    def executorLost(self, driver, executorId, agentId, status):
        log("FAILURE: executor %s on agent %s, status %s" % (executorId.value, agentId.value, status))
        self._push("executor_lost", (executorId.value, agentId.value, status))

    # -- main thread --

    def start(self):
        log("SUBSCRIBE as %s" % (self.info,))
        self.driver.start()

    def stop(self, failover):
        """`driver.stop(failover=...)` then waits for pymesos's IO thread to end (with
        failover=False pymesos sends TEARDOWN on its way out)."""
        log("driver.stop(failover=%s)" % failover)
        self.stopping = True
        self.driver.stop(failover=failover)
        self.driver.join()
        log("driver stopped")

    def next_event(self, timeout):
        """The next event within `timeout` seconds, or None."""
        try:
            return self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def handle_other(self, ev, what):
        """What happens to an event nobody waits for."""
        if ev.kind == "disconnected" and not self.stopping:
            if not self.subscribed:
                log("  (not subscribed yet: pymesos retries)")
                return
            fail("disconnected from the master while waiting for %s" % what)
        if ev.kind == "offer":
            self.decline(ev.data, refuse=5)

    def wait_for(self, what, pred, timeout):
        """Reads events until `pred(ev)` holds; other events go to `handle_other`."""
        until = time.monotonic() + timeout
        while True:
            left = until - time.monotonic()
            if left <= 0:
                fail("timed out after %.1f s waiting for %s" % (timeout, what))
            ev = self.next_event(left)
            if ev is None:
                continue
            if pred(ev):
                return ev
            self.handle_other(ev, what)

    def wait_subscribed(self, timeout=15):
        ev = self.wait_for("SUBSCRIBED", lambda e: e.kind in ("registered", "reregistered"), timeout)
        if not ev.data:
            fail("SUBSCRIBED without a framework id")
        return ev

    def wait_offer(self, timeout=10, what="an offer"):
        return self.wait_for(what, lambda e: e.kind == "offer", timeout)

    def wait_update(self, task_id, states, timeout=10, reason=None):
        """The next update for `task_id` in one of `states` (and with `reason` when given).
        An update for it in another terminal state fails at once."""
        states = set([states] if isinstance(states, str) else states)
        what = "%s of task %s%s" % ("/".join(sorted(states)), task_id, " with %s" % reason if reason else "")

        def pred(ev):
            if ev.kind != "update" or task_id_of(ev.data) != task_id:
                return False
            s = ev.data
            if s.state in states and (reason is None or s.get("reason") == reason):
                return True
            if s.state in TERMINAL and s.state not in states:
                fail("task %s ended in %s while waiting for %s: %s" % (task_id, s.state, what, describe_status(s)))
            return False

        return self.wait_for(what, pred, timeout)

    def wait_updates(self, wanted, timeout=10):
        """Waits for updates putting each task of `wanted` ({task id: state}) in its state, in
        any order. An update for one of them in another terminal state fails at once."""
        pending = dict(wanted)
        until = time.monotonic() + timeout
        while pending:
            if time.monotonic() >= until:
                fail("timed out after %.1f s waiting for updates %s" % (timeout, pending))
            ev = self.wait_for(
                "updates %s" % pending,
                lambda e: e.kind == "update" and e.data.task_id.value in pending,
                timeout=max(0.0, until - time.monotonic()),
            )
            s = ev.data
            want = pending[s.task_id.value]
            if s.state == want:
                del pending[s.task_id.value]
            elif s.state in TERMINAL:
                fail("task %s ended in %s, wanted %s: %s" % (s.task_id.value, s.state, want, describe_status(s)))

    def decline(self, offer, refuse=None):
        filters = None if refuse is None else {"refuse_seconds": refuse}
        log("DECLINE offer %s filters %s" % (offer.id.value, filters))
        self.driver.declineOffer(offer.id, filters)

    def launch(self, offer, tasks):
        log("ACCEPT offer %s: LAUNCH %s" % (offer.id.value, [t["task_id"]["value"] for t in tasks]))
        self.driver.launchTasks(offer.id, tasks)

    def accept(self, offer, operations, refuse=None):
        """ACCEPT `offer` with any offer operations (dicts as Mesos's JSON writes them)."""
        filters = None if refuse is None else {"refuse_seconds": refuse}
        log("ACCEPT offer %s: %s filters %s" % (offer.id.value, [(o["type"], o.get("id", {}).get("value")) for o in operations], filters))
        self.driver.acceptOffers([offer.id], operations, filters)

    def kill(self, task_id):
        log("KILL %s" % task_id)
        self.driver.killTask({"value": task_id})

    def reconcile(self, task_ids):
        log("RECONCILE %s" % (task_ids or "(implicit: all tasks)"))
        self.driver.reconcileTasks([{"task_id": {"value": t}} for t in task_ids])
