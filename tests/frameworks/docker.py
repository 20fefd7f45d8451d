#!/usr/bin/env python3
"""Scenario 8, Docker: LAUNCH a task with ContainerInfo DOCKER (--image, network BRIDGE,
host port --port -> container port 80, the port in its resources) running
`httpd -f -p 80 -h /etc`; on TASK_RUNNING, GET http://127.0.0.1:PORT/hostname until it answers
200 (within 15 s); then KILL it -> TASK_KILLED."""

import time
import urllib.request

from common import Framework, command_task, fail, log, now, run, setup


def extra(p):
    p.add_argument("--image", default="local/busybox:latest")
    p.add_argument("--port", type=int, default=31050)


args = setup(__doc__, default_deadline=60.0, extra_args=extra)


def main():
    fw = Framework(args, "docker")
    fw.start()
    fw.wait_subscribed()
    offer = fw.wait_offer().data
    task = command_task(args.task_id, offer, "echo web-up; exec httpd -f -p 80 -h /etc", ports=[args.port])
    task["container"] = {
        "type": "DOCKER",
        "docker": {
            "image": args.image,
            "network": "BRIDGE",
            "port_mappings": [{"host_port": args.port, "container_port": 80, "protocol": "tcp"}],
        },
    }
    fw.launch(offer, [task])
    fw.wait_update(args.task_id, "TASK_RUNNING", timeout=30)

    url = "http://127.0.0.1:%d/hostname" % args.port
    until = now() + 15
    last = None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = r.read().decode("utf-8", "replace")
                if r.status == 200:
                    log("GET %s -> 200 %r" % (url, body.strip()))
                    break
                last = "status %d" % r.status
        except Exception as e:
            last = repr(e)
        if now() > until:
            fail("GET %s never answered 200; last: %s" % (url, last))
        time.sleep(0.1)
    if not body.strip():
        fail("empty /etc/hostname served")

    fw.kill(args.task_id)
    fw.wait_update(args.task_id, "TASK_KILLED", timeout=15)
    fw.stop(failover=False)


run(main)
