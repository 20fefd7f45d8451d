// protolaunch: a Mesos v1 scheduler written with Debian's mesos-go
// (golang-github-mesos-mesos-go-dev, api/v1/lib/httpcli/httpsched) that speaks
// application/x-protobuf end to end: SUBSCRIBE, take one offer, LAUNCH a command
// task (`echo hi`), see TASK_RUNNING then TASK_FINISHED, ACKNOWLEDGE both, TEARDOWN,
// exit 0. Any other outcome, or the deadline passing, exits non-zero with a
// message starting "FAIL:".
//
// Build (no network): GO111MODULE=off GOPATH=<dir>:/usr/share/gocode go build
//
// Usage: protolaunch [-task-id ID] [-deadline 30s] <master host:port>
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/mesos/mesos-go/api/v1/lib"
	"github.com/mesos/mesos-go/api/v1/lib/encoding/codecs"
	"github.com/mesos/mesos-go/api/v1/lib/httpcli"
	"github.com/mesos/mesos-go/api/v1/lib/httpcli/httpsched"
	"github.com/mesos/mesos-go/api/v1/lib/scheduler"
	"github.com/mesos/mesos-go/api/v1/lib/scheduler/calls"
)

const protobuf = "application/x-protobuf"

var start = time.Now()

func logf(format string, args ...interface{}) {
	fmt.Printf("[%6.3fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: %s\n", fmt.Sprintf(format, args...))
	os.Exit(1)
}

// wire checks that every request and response on the wire is protobuf.
type wire struct {
	mu       sync.Mutex
	requests int
	problems []string
}

func (w *wire) doer(f httpcli.DoFunc) httpcli.DoFunc {
	return func(req *http.Request) (*http.Response, error) {
		ct := req.Header.Get("Content-Type")
		resp, err := f(req)
		w.mu.Lock()
		defer w.mu.Unlock()
		w.requests++
		if ct != protobuf {
			w.problems = append(w.problems, fmt.Sprintf("request Content-Type %q", ct))
		}
		if err == nil && resp.StatusCode == 200 {
			if rct := resp.Header.Get("Content-Type"); rct != protobuf {
				w.problems = append(w.problems, fmt.Sprintf("200 response Content-Type %q", rct))
			}
		}
		if err == nil && resp.StatusCode != 200 && resp.StatusCode != 202 {
			w.problems = append(w.problems, fmt.Sprintf("HTTP %d for a %s request", resp.StatusCode, req.Method))
		}
		return resp, err
	}
}

func (w *wire) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.problems) > 0 {
		fail("not protobuf end to end: %v", w.problems)
	}
	logf("wire: %d requests, all %s", w.requests, protobuf)
}

func scalar(rs []mesos.Resource, name string) float64 {
	total := 0.0
	for _, r := range rs {
		if r.Name == name && r.Scalar != nil {
			total += r.Scalar.Value
		}
	}
	return total
}

// taskResources takes cpus and mem for the task from the offer's own resources, so
// they keep the offer's role and allocation_info.
func taskResources(rs []mesos.Resource, cpus, mem float64) []mesos.Resource {
	var out []mesos.Resource
	want := map[string]float64{"cpus": cpus, "mem": mem}
	for _, r := range rs {
		need, ok := want[r.Name]
		if !ok || need <= 0 || r.Scalar == nil {
			continue
		}
		take := need
		if r.Scalar.Value < take {
			take = r.Scalar.Value
		}
		c := r
		c.Scalar = &mesos.Value_Scalar{Value: take}
		out = append(out, c)
		want[r.Name] = need - take
	}
	return out
}

func main() {
	taskID := flag.String("task-id", fmt.Sprintf("go-proto-%d", os.Getpid()), "id of the task to launch")
	deadline := flag.Duration("deadline", 30*time.Second, "give up (exit 2) after this long")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: protolaunch [-task-id ID] [-deadline 30s] <master host:port>")
		os.Exit(64)
	}
	master := flag.Arg(0)

	// Progress, for the deadline message.
	var (
		progressMu sync.Mutex
		progress   = "subscribing"
	)
	setProgress := func(p string) {
		progressMu.Lock()
		progress = p
		progressMu.Unlock()
	}
	time.AfterFunc(*deadline, func() {
		progressMu.Lock()
		defer progressMu.Unlock()
		fmt.Fprintf(os.Stderr, "FAIL: deadline of %v passed; last progress: %s\n", *deadline, progress)
		os.Exit(2)
	})

	w := &wire{}
	cli := httpcli.New(
		httpcli.Endpoint("http://"+master+"/api/v1/scheduler"),
		httpcli.Codec(codecs.ByMediaType[codecs.MediaTypeProtobuf]),
		httpcli.WrapDoer(w.doer),
	)
	caller := httpsched.NewCaller(cli)
	ctx, cancel := context.WithTimeout(context.Background(), *deadline)
	defer cancel()

	failover := 0.0
	info := &mesos.FrameworkInfo{User: "shoal-test", Name: "mesos-go protobuf launch", FailoverTimeout: &failover}
	resp, err := caller.Call(ctx, calls.Subscribe(info))
	if err != nil {
		fail("SUBSCRIBE: %v", err)
	}
	defer resp.Close()

	var (
		frameworkID string
		launched    bool
		sawRunning  bool
		acked       = map[mesos.TaskState]bool{}
	)
	call := func(what string, c *scheduler.Call) {
		c = c.With(calls.Framework(frameworkID))
		if err := calls.CallNoData(ctx, caller, c); err != nil {
			fail("%s: %v", what, err)
		}
	}
	for {
		var e scheduler.Event
		if err := resp.Decode(&e); err != nil {
			fail("reading the event stream (%s): %v", progress, err)
		}
		switch e.GetType() {
		case scheduler.Event_SUBSCRIBED:
			s := e.GetSubscribed()
			frameworkID = s.GetFrameworkID().GetValue()
			if frameworkID == "" {
				fail("SUBSCRIBED without a framework_id")
			}
			logf("SUBSCRIBED framework_id=%s heartbeat_interval_seconds=%v master=%s version=%s",
				frameworkID, s.GetHeartbeatIntervalSeconds(), s.GetMasterInfo().GetID(), s.GetMasterInfo().GetVersion())
			setProgress("subscribed, waiting for an offer")
		case scheduler.Event_HEARTBEAT:
			logf("HEARTBEAT")
		case scheduler.Event_OFFERS:
			offers := e.GetOffers().GetOffers()
			logf("OFFERS: %d", len(offers))
			var decline []mesos.OfferID
			for _, o := range offers {
				if launched || scalar(o.Resources, "cpus") < 0.1 || scalar(o.Resources, "mem") < 32 {
					decline = append(decline, o.ID)
					continue
				}
				task := mesos.TaskInfo{
					Name:      "echo-hi",
					TaskID:    mesos.TaskID{Value: *taskID},
					AgentID:   o.AgentID,
					Resources: taskResources(o.Resources, 0.1, 32),
					Command:   &mesos.CommandInfo{Value: proto("echo hi"), Shell: protoBool(true)},
				}
				call("ACCEPT", calls.Accept(calls.OfferOperations{calls.OpLaunch(task)}.WithOffers(o.ID)))
				launched = true
				logf("ACCEPT offer %s on agent %s (%s): LAUNCH %s", o.ID.Value, o.AgentID.Value, o.Hostname, *taskID)
				setProgress("launched " + *taskID + ", waiting for TASK_RUNNING")
			}
			if len(decline) > 0 {
				call("DECLINE", calls.Decline(decline...).With(calls.RefuseSeconds(time.Hour)))
			}
		case scheduler.Event_RESCIND:
			logf("RESCIND %s", e.GetRescind().GetOfferID().Value)
		case scheduler.Event_UPDATE:
			st := e.GetUpdate().GetStatus()
			state := st.GetState()
			reason := "-"
			if st.Reason != nil {
				reason = st.Reason.String()
			}
			logf("UPDATE task=%s state=%s source=%s reason=%s message=%q uuid=%d bytes",
				st.TaskID.Value, state, st.GetSource(), reason, st.GetMessage(), len(st.GetUUID()))
			if st.TaskID.Value != *taskID {
				fail("UPDATE for unknown task %q", st.TaskID.Value)
			}
			if len(st.GetUUID()) > 0 {
				agent := st.GetAgentID().GetValue()
				if agent == "" {
					fail("UPDATE %s has a uuid but no agent_id: cannot ACKNOWLEDGE", state)
				}
				call("ACKNOWLEDGE "+state.String(), calls.Acknowledge(agent, st.TaskID.Value, st.GetUUID()))
				acked[state] = true
				logf("ACKNOWLEDGE %s", state)
			}
			switch state {
			case mesos.TASK_STAGING, mesos.TASK_STARTING:
			case mesos.TASK_RUNNING:
				sawRunning = true
				setProgress("TASK_RUNNING seen, waiting for TASK_FINISHED")
			case mesos.TASK_FINISHED:
				if !sawRunning {
					fail("TASK_FINISHED before any TASK_RUNNING")
				}
				if !acked[mesos.TASK_RUNNING] || !acked[mesos.TASK_FINISHED] {
					fail("TASK_RUNNING and TASK_FINISHED should both carry a uuid to acknowledge; acknowledged: %v", acked)
				}
				w.check()
				call("TEARDOWN", &scheduler.Call{Type: scheduler.Call_TEARDOWN})
				logf("OK: TASK_RUNNING then TASK_FINISHED, both acknowledged")
				os.Exit(0)
			default:
				fail("task ended %s (reason %s): %s", state, reason, st.GetMessage())
			}
		case scheduler.Event_ERROR:
			fail("ERROR event: %s", e.GetError().GetMessage())
		default:
			logf("event %s (ignored)", e.GetType())
		}
	}
}

func proto(s string) *string { return &s }
func protoBool(b bool) *bool { return &b }
