// v0sched: a framework on the v0 scheduler driver of Debian's mesos-go
// (golang-github-mesos-mesos-go-dev 0.0.6, api/v0/scheduler), which speaks the
// libprocess protocol with the legacy mesos.internal messages
// (RegisterFrameworkMessage, LaunchTasksMessage, KillTaskMessage,
// ReconcileTasksMessage, StatusUpdateAcknowledgementMessage, ...). Its
// AcceptOffers is never used: that one posts to /api/v1/scheduler.
//
// A test drives it with commands on stdin, one a line:
//
//	launch <task_id> <offer_id> cmd <shell command>
//	launch <task_id> <offer_id> docker <image> <shell command>
//	decline <offer_id> [refuse_seconds]
//	kill <task_id>
//	reconcile [<task_id> <agent_id> ...]   (no pairs: implicit)
//	revive
//	stop            (driver.Stop(false): the framework unregisters)
//	stop-failover   (driver.Stop(true): it does not)
//	abort
//
// and reads every driver callback as one JSON line on stdout, each with an
// "event" key (registered, reregistered, disconnected, offers, rescinded,
// status, framework_message, slave_lost, executor_lost, error), plus
// {"ack": "<command>", ...} once a command is carried out. Offers are kept
// until a command uses them: the test decides what to decline.
//
// It exits 0 after stop, stop-failover or abort, and when stdin ends.
//
// What this driver needs from a master, beyond the messages themselves (read in its
// sources): given host:port, its standalone detector finds the master only once
// GET http://host:port/state answers a "leader" that parses as a UPID, and polls it
// again every 30 s; its UPID is scheduler(1)@127.0.0.1:<port>; its message server keeps a
// connection open only for requests carrying exactly `Connection: Keep-Alive` (it closes
// it after the first message otherwise) and answers nothing to a request whose
// User-Agent starts with libprocess/ (so a master must not wait for a response).
//
// Build (no network): GO111MODULE=off GOPATH=<dir>:/usr/share/gocode go build
//
// Usage: v0sched --master zk://127.0.0.1:2181/mesos|127.0.0.1:5050 [--name N]
// [--role R] [--framework-id ID] [--failover-timeout SECONDS] [--checkpoint]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/gogo/protobuf/proto"
	mesos "github.com/mesos/mesos-go/api/v0/mesosproto"
	sched "github.com/mesos/mesos-go/api/v0/scheduler"
)

// What a launched task asks for; the test's agents offer far more.
const (
	taskCpus  = 0.1
	taskMemMB = 32.0
	// The longest command line read from stdin.
	commandBytesMax = 64 * 1024
)

// out serializes the JSON lines on stdout (callbacks and commands print from two goroutines).
type out struct {
	mu sync.Mutex
}

func (o *out) line(v map[string]interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]interface{}{"event": "internal", "message": err.Error()})
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	os.Stdout.Write(append(b, '\n'))
}

func (o *out) event(name string, fields map[string]interface{}) {
	if fields == nil {
		fields = map[string]interface{}{}
	}
	fields["event"] = name
	o.line(fields)
}

// scheduler prints every callback and keeps the offers it has seen, so a launch can name an
// offer by id alone.
type scheduler struct {
	out    *out
	mu     sync.Mutex
	offers map[string]*mesos.Offer
}

// dottedIP reads MasterInfo.ip, an IPv4 address in network byte order packed into a uint32
// (Mesos takes in_addr.s_addr as it lies in memory, so the first octet is the low byte).
func dottedIP(ip uint32) string {
	return net.IPv4(byte(ip), byte(ip>>8), byte(ip>>16), byte(ip>>24)).String()
}

func masterJSON(mi *mesos.MasterInfo) map[string]interface{} {
	if mi == nil {
		return nil
	}
	return map[string]interface{}{
		"id":       mi.GetId(),
		"ip":       dottedIP(mi.GetIp()),
		"ip_raw":   mi.GetIp(),
		"port":     mi.GetPort(),
		"pid":      mi.GetPid(),
		"hostname": mi.GetHostname(),
		"version":  mi.GetVersion(),
	}
}

func resourcesJSON(rs []*mesos.Resource) []interface{} {
	list := []interface{}{}
	for _, r := range rs {
		m := map[string]interface{}{"name": r.GetName(), "role": r.GetRole(), "type": r.GetType().String()}
		switch r.GetType() {
		case mesos.Value_SCALAR:
			m["scalar"] = r.GetScalar().GetValue()
		case mesos.Value_RANGES:
			ranges := []interface{}{}
			for _, rg := range r.GetRanges().GetRange() {
				ranges = append(ranges, []uint64{rg.GetBegin(), rg.GetEnd()})
			}
			m["ranges"] = ranges
		case mesos.Value_SET:
			m["set"] = r.GetSet().GetItem()
		}
		list = append(list, m)
	}
	return list
}

func urlJSON(u *mesos.URL) map[string]interface{} {
	if u == nil {
		return nil
	}
	return map[string]interface{}{
		"scheme": u.GetScheme(),
		"address": map[string]interface{}{
			"hostname": u.GetAddress().GetHostname(),
			"ip":       u.GetAddress().GetIp(),
			"port":     u.GetAddress().GetPort(),
		},
		"path": u.GetPath(),
	}
}

func (s *scheduler) Registered(_ sched.SchedulerDriver, id *mesos.FrameworkID, mi *mesos.MasterInfo) {
	s.out.event("registered", map[string]interface{}{"framework_id": id.GetValue(), "master": masterJSON(mi)})
}

func (s *scheduler) Reregistered(_ sched.SchedulerDriver, mi *mesos.MasterInfo) {
	s.out.event("reregistered", map[string]interface{}{"master": masterJSON(mi)})
}

func (s *scheduler) Disconnected(sched.SchedulerDriver) {
	s.out.event("disconnected", nil)
}

func (s *scheduler) ResourceOffers(_ sched.SchedulerDriver, offers []*mesos.Offer) {
	list := []interface{}{}
	s.mu.Lock()
	for _, o := range offers {
		s.offers[o.GetId().GetValue()] = o
		list = append(list, map[string]interface{}{
			"id":        o.GetId().GetValue(),
			"agent_id":  o.GetSlaveId().GetValue(),
			"hostname":  o.GetHostname(),
			"url":       urlJSON(o.GetUrl()),
			"resources": resourcesJSON(o.GetResources()),
		})
	}
	s.mu.Unlock()
	s.out.event("offers", map[string]interface{}{"offers": list})
}

func (s *scheduler) OfferRescinded(_ sched.SchedulerDriver, id *mesos.OfferID) {
	s.mu.Lock()
	delete(s.offers, id.GetValue())
	s.mu.Unlock()
	s.out.event("rescinded", map[string]interface{}{"offer_id": id.GetValue()})
}

// enumName is "" for an enum field that is not set (its getter would answer the enum's
// first value: SOURCE_MASTER, REASON_COMMAND_EXECUTOR_FAILED).
func enumName(set bool, name string) string {
	if !set {
		return ""
	}
	return name
}

func (s *scheduler) StatusUpdate(_ sched.SchedulerDriver, st *mesos.TaskStatus) {
	// The driver acknowledges updates itself (its acknowledgements are implicit); the test
	// sees every update all the same.
	s.out.event("status", map[string]interface{}{
		"task_id":      st.GetTaskId().GetValue(),
		"agent_id":     st.GetSlaveId().GetValue(),
		"state":        st.GetState().String(),
		"source":       enumName(st.Source != nil, st.GetSource().String()),
		"reason":       enumName(st.Reason != nil, st.GetReason().String()),
		"message":      st.GetMessage(),
		"uuid_present": len(st.GetUuid()) > 0,
	})
}

func (s *scheduler) FrameworkMessage(_ sched.SchedulerDriver, e *mesos.ExecutorID, a *mesos.SlaveID, data string) {
	s.out.event("framework_message", map[string]interface{}{
		"executor_id": e.GetValue(), "agent_id": a.GetValue(), "data": data,
	})
}

func (s *scheduler) SlaveLost(_ sched.SchedulerDriver, id *mesos.SlaveID) {
	s.out.event("slave_lost", map[string]interface{}{"agent_id": id.GetValue()})
}

func (s *scheduler) ExecutorLost(_ sched.SchedulerDriver, e *mesos.ExecutorID, a *mesos.SlaveID, status int) {
	s.out.event("executor_lost", map[string]interface{}{
		"executor_id": e.GetValue(), "agent_id": a.GetValue(), "status": status,
	})
}

func (s *scheduler) Error(_ sched.SchedulerDriver, message string) {
	s.out.event("error", map[string]interface{}{"message": message})
}

// takeOffer removes the offer from those kept (a launch or a decline uses it up).
func (s *scheduler) takeOffer(id string) (*mesos.Offer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.offers[id]
	delete(s.offers, id)
	return o, ok
}

// offerRole is the role the offer's resources are allocated to ("*" when it says none).
func offerRole(o *mesos.Offer) string {
	for _, r := range o.GetResources() {
		if r.GetRole() != "" {
			return r.GetRole()
		}
	}
	return "*"
}

func scalar(name, role string, value float64) *mesos.Resource {
	return &mesos.Resource{
		Name:   proto.String(name),
		Type:   mesos.Value_SCALAR.Enum(),
		Scalar: &mesos.Value_Scalar{Value: proto.Float64(value)},
		Role:   proto.String(role),
	}
}

// taskInfo builds the TaskInfo of `launch`: words are what follows the offer id
// (`cmd <shell command>` or `docker <image> <shell command>`).
func taskInfo(taskID string, o *mesos.Offer, words []string) (*mesos.TaskInfo, error) {
	if len(words) < 2 {
		return nil, fmt.Errorf("want cmd <command> or docker <image> <command>")
	}
	role := offerRole(o)
	t := &mesos.TaskInfo{
		Name:    proto.String(taskID),
		TaskId:  &mesos.TaskID{Value: proto.String(taskID)},
		SlaveId: o.GetSlaveId(),
		Resources: []*mesos.Resource{
			scalar("cpus", role, taskCpus),
			scalar("mem", role, taskMemMB),
		},
	}
	switch words[0] {
	case "cmd":
		t.Command = &mesos.CommandInfo{Shell: proto.Bool(true), Value: proto.String(strings.Join(words[1:], " "))}
	case "docker":
		if len(words) < 3 {
			return nil, fmt.Errorf("want docker <image> <command>")
		}
		t.Command = &mesos.CommandInfo{Shell: proto.Bool(true), Value: proto.String(strings.Join(words[2:], " "))}
		t.Container = &mesos.ContainerInfo{
			Type: mesos.ContainerInfo_DOCKER.Enum(),
			Docker: &mesos.ContainerInfo_DockerInfo{
				Image:   proto.String(words[1]),
				Network: mesos.ContainerInfo_DockerInfo_HOST.Enum(),
			},
		}
	default:
		return nil, fmt.Errorf("unknown task kind %q (cmd or docker)", words[0])
	}
	return t, nil
}

// command carries out one stdin line; done says the program should exit after it.
func (s *scheduler) command(driver *sched.MesosSchedulerDriver, line string) (fields map[string]interface{}, done bool) {
	words := strings.Fields(line)
	fields = map[string]interface{}{}
	var status mesos.Status
	var err error
	if len(words) == 0 {
		return fields, false
	}
	switch words[0] {
	case "launch":
		if len(words) < 5 {
			err = fmt.Errorf("usage: launch <task_id> <offer_id> cmd|docker ...")
			break
		}
		o, ok := s.takeOffer(words[2])
		if !ok {
			err = fmt.Errorf("no offer %q is kept", words[2])
			break
		}
		var t *mesos.TaskInfo
		if t, err = taskInfo(words[1], o, words[3:]); err != nil {
			break
		}
		status, err = driver.LaunchTasks([]*mesos.OfferID{o.GetId()}, []*mesos.TaskInfo{t}, &mesos.Filters{})
	case "decline":
		if len(words) < 2 {
			err = fmt.Errorf("usage: decline <offer_id> [refuse_seconds]")
			break
		}
		filters := &mesos.Filters{}
		if len(words) > 2 {
			var refuse float64
			if refuse, err = strconv.ParseFloat(words[2], 64); err != nil {
				break
			}
			filters.RefuseSeconds = proto.Float64(refuse)
		}
		s.takeOffer(words[1])
		status, err = driver.DeclineOffer(&mesos.OfferID{Value: proto.String(words[1])}, filters)
	case "kill":
		if len(words) != 2 {
			err = fmt.Errorf("usage: kill <task_id>")
			break
		}
		status, err = driver.KillTask(&mesos.TaskID{Value: proto.String(words[1])})
	case "reconcile":
		pairs := words[1:]
		if len(pairs)%2 != 0 {
			err = fmt.Errorf("usage: reconcile [<task_id> <agent_id> ...]")
			break
		}
		statuses := []*mesos.TaskStatus{}
		for i := 0; i+1 < len(pairs); i += 2 {
			// The state is required by the message and ignored by the master (Marathon
			// sends TASK_LOST, as here).
			statuses = append(statuses, &mesos.TaskStatus{
				TaskId:  &mesos.TaskID{Value: proto.String(pairs[i])},
				SlaveId: &mesos.SlaveID{Value: proto.String(pairs[i+1])},
				State:   mesos.TaskState_TASK_LOST.Enum(),
			})
		}
		status, err = driver.ReconcileTasks(statuses)
	case "revive":
		status, err = driver.ReviveOffers()
	case "stop":
		status, err = driver.Stop(false)
		done = true
	case "stop-failover":
		status, err = driver.Stop(true)
		done = true
	case "abort":
		status, err = driver.Abort()
		done = true
	default:
		err = fmt.Errorf("unknown command %q", words[0])
	}
	fields["status"] = status.String()
	if err != nil {
		fields["error"] = err.Error()
	}
	return fields, done
}

func main() {
	master := flag.String("master", "", "zk://host:port/path or host:port")
	name := flag.String("name", "v0sched", "FrameworkInfo.name")
	role := flag.String("role", "*", "FrameworkInfo.role")
	frameworkID := flag.String("framework-id", "", "register again with this FrameworkID")
	failoverTimeout := flag.Float64("failover-timeout", 0, "FrameworkInfo.failover_timeout, seconds")
	checkpoint := flag.Bool("checkpoint", false, "FrameworkInfo.checkpoint")
	flag.Parse()
	// glog (the driver's logger) writes files under /tmp unless told otherwise.
	_ = flag.Set("logtostderr", "true")
	o := &out{}
	if *master == "" {
		o.event("error", map[string]interface{}{"message": "--master is required"})
		os.Exit(2)
	}
	info := &mesos.FrameworkInfo{
		User:       proto.String(""),
		Name:       proto.String(*name),
		Role:       proto.String(*role),
		Checkpoint: proto.Bool(*checkpoint),
	}
	if *failoverTimeout > 0 {
		info.FailoverTimeout = proto.Float64(*failoverTimeout)
	}
	if *frameworkID != "" {
		info.Id = &mesos.FrameworkID{Value: proto.String(*frameworkID)}
	}
	s := &scheduler{out: o, offers: map[string]*mesos.Offer{}}
	driver, err := sched.NewMesosSchedulerDriver(sched.DriverConfig{
		Scheduler: s,
		Framework: info,
		Master:    *master,
		// Loopback only: the master dials the framework back at this address.
		HostnameOverride: "127.0.0.1",
		BindingAddress:   net.ParseIP("127.0.0.1"),
	})
	if err != nil {
		o.event("error", map[string]interface{}{"message": "driver: " + err.Error()})
		os.Exit(1)
	}
	if _, err := driver.Start(); err != nil {
		o.event("error", map[string]interface{}{"message": "start: " + err.Error()})
		os.Exit(1)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 4096), commandBytesMax)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		fields, done := s.command(driver, line)
		fields["ack"] = line
		o.line(fields)
		if done {
			os.Exit(0)
		}
	}
}
