// libmesos: a harness that behaves on the wire as libmesos 1.11's scheduler driver
// (src/sched/sched.cpp over 3rdparty/libprocess) does under Marathon, and checks what a
// master answers.
//
// What it sends, and how:
//   - only `mesos.scheduler.Call`, POSTed to /master/mesos.scheduler.Call, framed as
//     libprocess's MessageEncoder frames a message (encoder.hpp): the request line, exactly
//     the headers `User-Agent: libprocess/<pid>`, `Libprocess-From: <pid>`,
//     `Connection: Keep-Alive`, an empty `Host:` and `Transfer-Encoding: chunked`, no
//     Content-Type, then the body as one chunk;
//   - on one kept-alive TCP connection written by hand, whose responses (if any) are read
//     and ignored in the background, as libprocess ignores them;
//   - every message encoded with mesos-go's generated types: the v0 `mesosproto` (gogo)
//     for the Call and the mesos.internal messages; Debian's mesos-go 0.0.6 v0 protos
//     predate Mesos 1.2 (no FrameworkInfo.roles, MULTI_ROLE, allocation_info,
//     TASK_UNKNOWN), so those parts are built or read with mesos-go's v1 generated types
//     (`api/v1/lib`, wire-compatible with v0 by Mesos's design: same names and numbers)
//     and carried across as bytes the other type parses. No protobuf is written by hand.
//
// It listens on 127.0.0.1:<free port> as `scheduler-<uuid>@127.0.0.1:<port>`, answers
// the master's POSTs with 202 and decodes mesos.internal.* by the path's last segment.
//
// The scenario (each check one JSON line {"check": name, "ok": bool, "detail": ...}):
// SUBSCRIBE with a FrameworkInfo like Marathon's, retried with the driver's backoff until
// registered; MasterInfo (pid, version, ip, port); offers (pids, url, allocation roles);
// ACCEPT with one LAUNCH -> TASK_RUNNING, acknowledged -> not resent; Marathon's pacemaker
// probe (explicit reconciliation of an unknown task on an unknown agent); a pipelined
// burst of reconciliations and a REVIVE in one write; KILL -> TASK_KILLED; no
// FrameworkErrorMessage; every master message from MasterInfo.pid; TEARDOWN.
// It exits 0 only if every check passed.
//
// For failover and partition scenarios a run can be cut short and kept alive:
// --stop-after CHECK ends the scenario after that check; --hold then keeps the process
// (and so the master's link to it) alive, printing every master message as an
// {"event": ...} line and taking commands on stdin (`reconcile TASK AGENT`, `exit`; each
// answered by {"ack": line}) until `exit` or the end of stdin. --expect-error MESSAGE makes
// a FrameworkErrorMessage in answer to SUBSCRIBE the expected outcome (a `framework_error`
// check) instead of a failure. --skip-running-ack leaves the first TASK_RUNNING
// unacknowledged, to see the master resend it (a `resent_unacknowledged` check).
//
// Build (no network): GO111MODULE=off GOPATH=<dir>:/usr/share/gocode go build
//
// Usage: libmesos --master host:port|zk://host:port/path [--roles a,b] [--multi-role]
// [--partition-aware] [--failover-timeout S] [--framework-id ID] [--force]
// [--docker-image IMAGE] [--update-retry D] [--no-teardown] [--stop-after CHECK] [--hold]
// [--expect-error MESSAGE] [--skip-running-ack]
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/mesos/mesos-go/api/v0/detector"
	"github.com/mesos/mesos-go/api/v0/detector/zoo"
	v0 "github.com/mesos/mesos-go/api/v0/mesosproto"
	sched "github.com/mesos/mesos-go/api/v0/mesosproto/scheduler"
	v1 "github.com/mesos/mesos-go/api/v1/lib"
	"github.com/pborman/uuid"
)

// Bounds and timings. The registration backoff is sched.cpp's: the first SUBSCRIBE at
// once, then a random delay in [0, b) with b starting at the registration backoff factor
// (flags.registration_backoff_factor, 2 s) and doubling up to
// REGISTRATION_RETRY_INTERVAL_MAX (1 min) and to a tenth of the failover timeout.
const (
	registrationBackoffFactor = 2 * time.Second
	registrationRetryMax      = time.Minute
	// Marathon's heartbeat expects the pacemaker's answer well within its 15 s interval;
	// a master answers from memory, so 1 s is generous.
	pacemakerAnswerMax = time.Second
	// Reconciliation probes in the pipelined burst (a REVIVE follows them).
	burstProbes = 20
	// The largest message body the harness accepts from the master.
	messageBytesMax = 16 << 20
	// Inbound messages buffered between the listener and the scenario.
	inboxMessagesMax = 4096
	// The task Marathon-like apps ask for here; test agents offer far more.
	taskCpus  = 0.1
	taskMemMB = 32.0
)

var start = time.Now()

// out writes the JSON lines on stdout, one at a time.
var outMu sync.Mutex

func printJSON(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"check":"internal","ok":false,"detail":%q}`, err.Error()))
	}
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(b, '\n'))
}

func logf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "[%7.3fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// inbound is one message the master POSTed to us.
type inbound struct {
	name string // the path's last segment, e.g. mesos.internal.StatusUpdateMessage
	from string // Libprocess-From (or User-Agent's libprocess/ suffix)
	body []byte
	at   time.Time
}

// listener accepts the master's connections and turns its POSTs into inbound messages.
type listener struct {
	ln          net.Listener
	id          string // our process id: scheduler-<uuid>
	inbox       chan inbound
	mu          sync.Mutex
	connections int
	refused     []string // requests that were not messages to us
	dropped     int      // messages lost because the inbox was full
}

func listen(id string) (*listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &listener{ln: ln, id: id, inbox: make(chan inbound, inboxMessagesMax)}
	go l.accept()
	return l, nil
}

func (l *listener) pid() string {
	return l.id + "@" + l.ln.Addr().String()
}

func (l *listener) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		l.connections++
		l.mu.Unlock()
		go l.serve(c)
	}
}

func (l *listener) refuse(why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.refused) < 20 {
		l.refused = append(l.refused, why)
	}
}

// serve reads requests as libprocess's decoder does (no Host required, chunked or
// Content-Length bodies) and answers each: 202 for a message to us, 404 for another
// process, 400 for what is not a libprocess message.
func (l *listener) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := ioutil.ReadAll(io.LimitReader(req.Body, messageBytesMax+1))
		req.Body.Close()
		if err != nil {
			return
		}
		status := "202 Accepted"
		from := req.Header.Get("Libprocess-From")
		if from == "" {
			from = strings.TrimPrefix(req.Header.Get("User-Agent"), "libprocess/")
		}
		parts := strings.SplitN(strings.TrimPrefix(req.URL.Path, "/"), "/", 2)
		switch {
		case req.Method != "POST" || from == "":
			status = "400 Bad Request"
			l.refuse(fmt.Sprintf("%s %s: not a libprocess message", req.Method, req.URL.Path))
		case len(parts) != 2 || parts[0] != l.id:
			status = "404 Not Found"
			l.refuse(fmt.Sprintf("POST %s: not addressed to %s", req.URL.Path, l.id))
		case len(body) > messageBytesMax:
			status = "413 Request Entity Too Large"
			l.refuse(fmt.Sprintf("POST %s: a body over %d bytes", req.URL.Path, messageBytesMax))
		default:
			names := strings.Split(parts[1], "/")
			msg := inbound{name: names[len(names)-1], from: from, body: body, at: time.Now()}
			select {
			case l.inbox <- msg:
			default:
				l.mu.Lock()
				l.dropped++
				l.mu.Unlock()
			}
		}
		if _, err := io.WriteString(c, "HTTP/1.1 "+status+"\r\nContent-Length: 0\r\n\r\n"); err != nil {
			return
		}
	}
}

// link is the one connection to the master that every Call goes out on.
type link struct {
	mu          sync.Mutex
	addr        string // ip:port of the master
	to          string // the master's process id ("master")
	from        string // our pid
	conn        net.Conn
	connections int // connections opened (1 when the master keeps ours alive)
	closes      int // times the master closed it under us
	responses   map[string]int
	sent        int // calls written (each is answered once, in order)
}

// encode frames one message as libprocess's MessageEncoder does.
func encode(to, from, name string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST /%s/%s HTTP/1.1\r\n", to, name)
	fmt.Fprintf(&b, "User-Agent: libprocess/%s\r\n", from)
	fmt.Fprintf(&b, "Libprocess-From: %s\r\n", from)
	b.WriteString("Connection: Keep-Alive\r\n")
	b.WriteString("Host: \r\n")
	if len(body) > 0 {
		fmt.Fprintf(&b, "Transfer-Encoding: chunked\r\n\r\n%x\r\n", len(body))
		b.Write(body)
		b.WriteString("\r\n0\r\n\r\n")
	} else {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func (k *link) dial(timeout time.Duration) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dialLocked(timeout)
}

func (k *link) dialLocked(timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", k.addr, timeout)
	if err != nil {
		return err
	}
	k.conn = c
	k.connections++
	go k.read(c)
	return nil
}

// read consumes whatever the master answers on our connection (libprocess ignores it).
func (k *link) read(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			k.mu.Lock()
			if k.conn == c {
				k.closes++
				k.conn = nil
			}
			k.mu.Unlock()
			c.Close()
			return
		}
		io.Copy(ioutil.Discard, resp.Body)
		resp.Body.Close()
		k.mu.Lock()
		k.responses[resp.Status]++
		k.mu.Unlock()
	}
}

// answered is how many responses the master has sent on our connections.
func (k *link) answered() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, c := range k.responses {
		n += c
	}
	return n
}

// sentCount is how many calls have been written.
func (k *link) sentCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sent
}

// waitAnswered waits until the master has sent at least n responses, or the deadline passes.
func (k *link) waitAnswered(n int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if k.answered() >= n {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return k.answered() >= n
}

// send writes the calls in one conn.Write. Like libprocess, it opens a new connection when
// the old one is gone (counted: a master should keep it alive).
func (k *link) send(calls ...*sched.Call) error {
	var buf []byte
	for _, c := range calls {
		body, err := proto.Marshal(c)
		if err != nil {
			return fmt.Errorf("encoding %s: %v", c.GetType(), err)
		}
		buf = append(buf, encode(k.to, k.from, "mesos.scheduler.Call", body)...)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		if k.conn == nil {
			if err := k.dialLocked(5 * time.Second); err != nil {
				return err
			}
		}
		if _, err := k.conn.Write(buf); err == nil {
			k.sent += len(calls)
			return nil
		}
		k.conn.Close()
		k.conn = nil
		k.closes++
	}
	return errors.New("the connection to the master failed twice")
}

// update is a StatusUpdateMessage as the scenario sees it.
type update struct {
	msg    *v0.StatusUpdateMessage
	status v1.TaskStatus // the same TaskStatus read with the v1 types (newer states)
	at     time.Time
}

func (u *update) taskID() string { return u.status.TaskID.Value }
func (u *update) state() v1.TaskState {
	if u.status.State == nil {
		return v1.TaskState(-1)
	}
	return *u.status.State
}

// harness holds the run's state and its checks.
type harness struct {
	link        *link
	l           *listener
	expectedPid string
	frameworkID string
	roles       []string
	multiRole   bool
	partition   bool
	stopAfter   string
	// hold keeps the process alive once the scenario ends (see the file comment).
	hold bool
	// expectError is the FrameworkErrorMessage SUBSCRIBE is expected to get ("": none).
	expectError string
	// skipRunningAck leaves the first TASK_RUNNING unacknowledged; skipped is its uuid
	// (as text) once that happened, skippedAt when it came.
	skipRunningAck bool
	skipped        string
	skippedAt      time.Time

	failed    []string
	passed    int
	unknown   map[string]int
	fromBad   []string
	messages  int
	errors    []string
	badOffers []string
	badUpdate []string
	// uuid (as text) of every update seen, and how often.
	uuids map[string]int
	// Offers received and not used or declined yet.
	offers []v1.Offer
}

func (h *harness) check(name string, ok bool, detail interface{}) {
	printJSON(map[string]interface{}{"check": name, "ok": ok, "detail": detail})
	if ok {
		h.passed++
	} else {
		h.failed = append(h.failed, name)
	}
	if name == h.stopAfter {
		h.finish(false)
	}
}

// fatal reports a failed check the scenario cannot go past, and ends the run.
func (h *harness) fatal(name string, detail interface{}) {
	h.check(name, false, detail)
	h.finish(false)
}

func (h *harness) finish(teardown bool) {
	if h.frameworkID != "" {
		printJSON(map[string]interface{}{"framework_id": h.frameworkID})
	}
	if h.hold && len(h.failed) == 0 {
		h.holdOn()
	}
	printJSON(map[string]interface{}{"summary": map[string]interface{}{
		"passed": h.passed, "failed": h.failed, "seconds": time.Since(start).Seconds(),
	}})
	if len(h.failed) > 0 {
		os.Exit(1)
	}
	os.Exit(0)
}

// bridge carries a message across to a wire-compatible generated type.
func bridge(from proto.Marshaler, to interface{ Unmarshal([]byte) error }) error {
	b, err := from.Marshal()
	if err != nil {
		return err
	}
	return to.Unmarshal(b)
}

func (h *harness) call(t sched.Call_Type) *sched.Call {
	c := &sched.Call{Type: t.Enum()}
	if h.frameworkID != "" {
		c.FrameworkId = &v0.FrameworkID{Value: proto.String(h.frameworkID)}
	}
	return c
}

// event is one decoded master message.
type event struct {
	name       string
	registered *v0.FrameworkRegisteredMessage
	rereg      *v0.FrameworkReregisteredMessage
	offers     *v0.ResourceOffersMessage
	update     *update
	errorMsg   *v0.FrameworkErrorMessage
	lostSlave  *v0.LostSlaveMessage
}

// next returns the next master message within `within` (nil when none came), after what
// every message gets: the sender check, decoding, the offer and update checks, and the
// acknowledgement an update with a uuid needs (Marathon acknowledges every update once
// it has processed it; sched.cpp keeps the uuid only if the update has one and both the
// sender and StatusUpdateMessage.pid are set).
func (h *harness) next(within time.Duration) *event {
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case m := <-h.l.inbox:
		return h.receive(m)
	case <-t.C:
		return nil
	}
}

// receive decodes and checks one master message (see next).
func (h *harness) receive(m inbound) *event {
	h.messages++
	if m.from != h.expectedPid && len(h.fromBad) < 10 {
		h.fromBad = append(h.fromBad, fmt.Sprintf("%s from %q", m.name, m.from))
	}
	ev := &event{name: m.name}
	var err error
	switch m.name {
	case "mesos.internal.FrameworkRegisteredMessage":
		ev.registered = &v0.FrameworkRegisteredMessage{}
		err = proto.Unmarshal(m.body, ev.registered)
	case "mesos.internal.FrameworkReregisteredMessage":
		ev.rereg = &v0.FrameworkReregisteredMessage{}
		err = proto.Unmarshal(m.body, ev.rereg)
	case "mesos.internal.ResourceOffersMessage":
		ev.offers = &v0.ResourceOffersMessage{}
		if err = proto.Unmarshal(m.body, ev.offers); err == nil {
			h.offersReceived(ev.offers)
		}
	case "mesos.internal.StatusUpdateMessage":
		msg := &v0.StatusUpdateMessage{}
		if err = proto.Unmarshal(m.body, msg); err == nil {
			u := &update{msg: msg, at: m.at}
			if err = bridge(msg.GetUpdate().GetStatus(), &u.status); err == nil {
				ev.update = u
				h.updateReceived(u)
			}
		}
	case "mesos.internal.FrameworkErrorMessage":
		ev.errorMsg = &v0.FrameworkErrorMessage{}
		err = proto.Unmarshal(m.body, ev.errorMsg)
		h.errors = append(h.errors, ev.errorMsg.GetMessage())
	case "mesos.internal.LostSlaveMessage":
		ev.lostSlave = &v0.LostSlaveMessage{}
		err = proto.Unmarshal(m.body, ev.lostSlave)
	case "mesos.internal.RescindResourceOfferMessage",
		"mesos.internal.ExitedExecutorMessage",
		"mesos.internal.ExecutorToFrameworkMessage":
		// Known to the driver; nothing in this scenario waits for them.
	default:
		h.unknown[m.name]++
	}
	if err != nil {
		h.unknown[m.name+" (undecodable: "+err.Error()+")"]++
		return &event{name: m.name}
	}
	return ev
}

func (h *harness) offersReceived(m *v0.ResourceOffersMessage) {
	if len(m.GetPids()) != len(m.GetOffers()) {
		h.badOffers = append(h.badOffers, fmt.Sprintf("%d pids for %d offers", len(m.GetPids()), len(m.GetOffers())))
	}
	for _, p := range m.GetPids() {
		if p != "" {
			h.badOffers = append(h.badOffers, fmt.Sprintf("pid %q (the master's own agents have none)", p))
		}
	}
	for _, o0 := range m.GetOffers() {
		var o v1.Offer
		if err := bridge(o0, &o); err != nil {
			h.badOffers = append(h.badOffers, "undecodable offer: "+err.Error())
			continue
		}
		id := o.ID.Value
		if o.FrameworkID.Value != h.frameworkID {
			h.badOffers = append(h.badOffers, fmt.Sprintf("offer %s: framework_id %q", id, o.FrameworkID.Value))
		}
		// sched.cpp's Event path CHECK-fails without them; Marathon reads url for the agent.
		if o.URL == nil || o.URL.Address.IP == nil || *o.URL.Address.IP == "" || o.URL.Path == nil {
			h.badOffers = append(h.badOffers, fmt.Sprintf("offer %s: url %v lacks address.ip or path", id, o.URL))
		}
		if h.multiRole {
			if o.AllocationInfo == nil || !h.isRole(o.AllocationInfo.GetRole()) {
				h.badOffers = append(h.badOffers, fmt.Sprintf("offer %s: allocation_info %v not one of %v", id, o.AllocationInfo, h.roles))
			}
			for _, r := range o.Resources {
				if r.AllocationInfo == nil || !h.isRole(r.AllocationInfo.GetRole()) {
					h.badOffers = append(h.badOffers, fmt.Sprintf("offer %s: resource %s allocation_info %v", id, r.Name, r.AllocationInfo))
				}
			}
		}
		h.offers = append(h.offers, o)
	}
}

func (h *harness) isRole(r string) bool {
	for _, x := range h.roles {
		if x == r {
			return true
		}
	}
	return false
}

func (h *harness) updateReceived(u *update) {
	up := u.msg.GetUpdate()
	if up.GetFrameworkId().GetValue() != h.frameworkID && len(h.badUpdate) < 10 {
		// sched.cpp: CHECK(framework.id() == update.framework_id()) aborts the JVM.
		h.badUpdate = append(h.badUpdate, fmt.Sprintf("%s %s: framework_id %q", u.taskID(), u.state(), up.GetFrameworkId().GetValue()))
	}
	if len(up.GetUuid()) == 0 {
		return
	}
	h.uuids[uuid.UUID(up.GetUuid()).String()]++
	if u.msg.GetPid() == "" {
		// The driver clears the uuid: Marathon could not acknowledge it.
		return
	}
	if h.skipRunningAck && h.skipped == "" && u.state() == v1.TASK_RUNNING {
		// A scheduler that has not processed the update yet (or crashed before it did)
		// does not acknowledge it: the master must send it again.
		h.skipped = uuid.UUID(up.GetUuid()).String()
		h.skippedAt = u.at
		logf("not acknowledging %s %s (uuid %s)", u.taskID(), u.state(), h.skipped)
		return
	}
	ack := h.call(sched.Call_ACKNOWLEDGE)
	ack.Acknowledge = &sched.Call_Acknowledge{
		SlaveId: up.GetSlaveId(),
		TaskId:  up.GetStatus().GetTaskId(),
		Uuid:    up.GetUuid(),
	}
	if up.GetSlaveId() == nil {
		return
	}
	if err := h.link.send(ack); err != nil {
		logf("ACKNOWLEDGE %s: %v", u.taskID(), err)
	}
}

func masterJSON(mi *v0.MasterInfo) map[string]interface{} {
	if mi == nil {
		return nil
	}
	return map[string]interface{}{
		"id": mi.GetId(), "ip": mi.GetIp(), "port": mi.GetPort(), "pid": mi.GetPid(),
		"hostname": mi.GetHostname(), "version": mi.GetVersion(),
	}
}

// versionAtLeast compares a semantic version's major.minor.patch with want.
func versionAtLeast(v string, want [3]int) bool {
	core := strings.SplitN(strings.SplitN(v, "-", 2)[0], "+", 2)[0]
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return false
	}
	for i := 0; i < 3; i++ {
		n, err := strconv.Atoi(parts[i])
		if err != nil || n < 0 {
			return false
		}
		if n != want[i] {
			return n > want[i]
		}
	}
	return true
}

// dotted reads MasterInfo.ip: IPv4 in network byte order packed into a uint32 the way
// Mesos does (in_addr.s_addr as it lies in memory: the first octet is the low byte).
func dotted(ip uint32) string {
	return net.IPv4(byte(ip), byte(ip>>8), byte(ip>>16), byte(ip>>24)).String()
}

// detect finds the master's pid: host:port (or master@host:port) as libmesos's
// StandaloneMasterDetector reads it, or zk:// through mesos-go's ZooKeeper detector.
func detect(spec string, within time.Duration) (string, error) {
	if !strings.HasPrefix(spec, "zk://") {
		s := strings.TrimPrefix(spec, "master@")
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			return "", fmt.Errorf("--master %q: %v", spec, err)
		}
		ips, err := net.LookupIP(host)
		if err != nil {
			return "", fmt.Errorf("--master %q: %v", spec, err)
		}
		for _, ip := range ips {
			if v4 := ip.To4(); v4 != nil {
				return "master@" + net.JoinHostPort(v4.String(), port), nil
			}
		}
		return "", fmt.Errorf("--master %q: no IPv4 address", spec)
	}
	md, err := zoo.NewMasterDetector(spec)
	if err != nil {
		return "", err
	}
	found := make(chan string, 16)
	err = md.Detect(detector.OnMasterChanged(func(mi *v0.MasterInfo) {
		if mi != nil {
			select {
			case found <- mi.GetPid():
			default:
			}
		}
	}))
	if err != nil {
		return "", err
	}
	select {
	case pid := <-found:
		md.Cancel()
		return pid, nil
	case <-time.After(within):
		md.Cancel()
		return "", fmt.Errorf("no master in ZooKeeper at %s within %v", spec, within)
	}
}

// frameworkInfo is Marathon's (MarathonSchedulerDriver.newFrameworkInfo), built with the
// v1 types and carried into v0's.
func (h *harness) frameworkInfo(failoverTimeout float64, hostname string) (*v0.FrameworkInfo, error) {
	name := "root"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	info := v1.FrameworkInfo{
		User:            name,
		Name:            "marathon",
		FailoverTimeout: proto.Float64(failoverTimeout),
		Checkpoint:      proto.Bool(true),
		Hostname:        proto.String(hostname),
	}
	if h.frameworkID != "" {
		info.ID = &v1.FrameworkID{Value: h.frameworkID}
	}
	if h.multiRole {
		info.Roles = h.roles
		info.Capabilities = append(info.Capabilities, v1.FrameworkInfo_Capability{Type: v1.FrameworkInfo_Capability_MULTI_ROLE})
	} else {
		info.Role = proto.String(h.roles[0])
	}
	if h.partition {
		info.Capabilities = append(info.Capabilities, v1.FrameworkInfo_Capability{Type: v1.FrameworkInfo_Capability_PARTITION_AWARE})
	}
	out := &v0.FrameworkInfo{}
	if err := bridge(&info, out); err != nil {
		return nil, err
	}
	return out, nil
}

// register sends SUBSCRIBE until the master registers us, with sched.cpp's backoff.
func (h *harness) register(info *v0.FrameworkInfo, force bool, failoverTimeout float64, within time.Duration) *event {
	until := time.Now().Add(within)
	backoff := registrationBackoffFactor
	attempts := 0
	for time.Now().Before(until) {
		c := h.call(sched.Call_SUBSCRIBE)
		c.Subscribe = &sched.Call_Subscribe{FrameworkInfo: info}
		if h.frameworkID != "" {
			c.Subscribe.Force = proto.Bool(force)
		}
		attempts++
		if err := h.link.send(c); err != nil {
			h.fatal("registered", fmt.Sprintf("SUBSCRIBE: %v", err))
		}
		limit := backoff
		if limit > registrationRetryMax {
			limit = registrationRetryMax
		}
		if ft := time.Duration(failoverTimeout * float64(time.Second)); ft > 0 && limit > ft/10 {
			limit = ft / 10
		}
		delay := time.Duration(rand.Int63n(int64(limit) + 1))
		retryAt := time.Now().Add(delay)
		if retryAt.After(until) {
			retryAt = until
		}
		for {
			left := time.Until(retryAt)
			if left <= 0 {
				break
			}
			ev := h.next(left)
			if ev != nil && (ev.registered != nil || ev.rereg != nil) {
				logf("registered after %d SUBSCRIBE call(s)", attempts)
				if h.expectError != "" {
					h.fatal("framework_error", map[string]interface{}{"message": ev.name, "want": h.expectError})
				}
				return ev
			}
			if ev != nil && ev.errorMsg != nil {
				got := ev.errorMsg.GetMessage()
				if h.expectError != "" {
					h.check("framework_error", got == h.expectError,
						map[string]interface{}{"message": got, "want": h.expectError, "subscribe_calls": attempts})
					h.finish(false)
				}
				h.fatal("registered", fmt.Sprintf("FrameworkErrorMessage: %s", got))
			}
		}
		backoff *= 2
	}
	h.fatal("registered", fmt.Sprintf("no FrameworkRegisteredMessage within %v (%d SUBSCRIBE calls)", within, attempts))
	return nil
}

// waitUpdate waits for an update satisfying pred, handling everything else on the way.
func (h *harness) waitUpdate(within time.Duration, pred func(*update) bool) *update {
	until := time.Now().Add(within)
	for {
		left := time.Until(until)
		if left <= 0 {
			return nil
		}
		ev := h.next(left)
		if ev != nil && ev.update != nil && pred(ev.update) {
			return ev.update
		}
	}
}

// sourceName and reasonName say "" for a field that is not set (its getter would answer
// the enum's first value, SOURCE_MASTER and REASON_COMMAND_EXECUTOR_FAILED).
func sourceName(s v1.TaskStatus) string {
	if s.Source == nil {
		return ""
	}
	return s.Source.String()
}

func reasonName(s v1.TaskStatus) string {
	if s.Reason == nil {
		return ""
	}
	return s.Reason.String()
}

func statusJSON(u *update) map[string]interface{} {
	if u == nil {
		return nil
	}
	s := u.status
	agent := ""
	if s.AgentID != nil {
		agent = s.AgentID.Value
	}
	return map[string]interface{}{
		"task_id": s.TaskID.Value, "agent_id": agent, "state": u.state().String(),
		"source": sourceName(s), "reason": reasonName(s), "message": s.GetMessage(),
		"status_uuid": len(s.UUID) > 0, "update_uuid": len(u.msg.GetUpdate().GetUuid()) > 0,
		"pid": u.msg.GetPid(), "framework_id": u.msg.GetUpdate().GetFrameworkId().GetValue(),
	}
}

// pacemaker builds Marathon's heartbeat probe (MesosHeartbeatMonitor): an explicit
// reconciliation of a task no agent has, on an agent that does not exist.
func (h *harness) pacemaker() (*sched.Call, string, string) {
	id := uuid.NewRandom().String()
	task := "fake-marathon-pacemaker-task-" + id
	agent := "fake-marathon-pacemaker-agent-" + id
	c := h.call(sched.Call_RECONCILE)
	c.Reconcile = &sched.Call_Reconcile{Tasks: []*sched.Call_Reconcile_Task{{
		TaskId:  &v0.TaskID{Value: proto.String(task)},
		SlaveId: &v0.SlaveID{Value: proto.String(agent)},
	}}}
	return c, task, agent
}

// pacemakerProblem says what is wrong with the answer to a pacemaker probe ("" if nothing).
func (h *harness) pacemakerProblem(u *update, agent string) string {
	want := v1.TASK_LOST
	if h.partition {
		want = v1.TASK_UNKNOWN
	}
	s := u.status
	switch {
	case u.state() != want:
		return fmt.Sprintf("state %s, want %s", u.state(), want)
	case s.Source == nil || *s.Source != v1.SOURCE_MASTER:
		return fmt.Sprintf("source %s, want SOURCE_MASTER", sourceName(s))
	case s.Reason == nil || *s.Reason != v1.REASON_RECONCILIATION:
		return fmt.Sprintf("reason %s, want REASON_RECONCILIATION", reasonName(s))
	case len(s.UUID) > 0 || len(u.msg.GetUpdate().GetUuid()) > 0:
		return "it carries a uuid (it would be acknowledged)"
	case s.AgentID == nil || s.AgentID.Value != agent:
		return fmt.Sprintf("agent_id %v, want %s echoed", s.AgentID, agent)
	}
	return ""
}

func isTerminal(s v1.TaskState) bool {
	switch s {
	case v1.TASK_FINISHED, v1.TASK_FAILED, v1.TASK_KILLED, v1.TASK_LOST, v1.TASK_ERROR,
		v1.TASK_DROPPED, v1.TASK_GONE, v1.TASK_GONE_BY_OPERATOR, v1.TASK_UNKNOWN:
		return true
	}
	return false
}

// launchOperation is one LAUNCH of `sleep 60` (or a Docker container running it) on the
// offer, its resources cut from the offer's own (role, allocation_info and all).
func launchOperation(o v1.Offer, taskID, image string) (*v0.Offer_Operation, error) {
	t := v1.TaskInfo{
		Name:    taskID,
		TaskID:  v1.TaskID{Value: taskID},
		AgentID: o.AgentID,
		Command: &v1.CommandInfo{Shell: proto.Bool(true), Value: proto.String("sleep 60")},
	}
	for _, want := range []struct {
		name   string
		amount float64
	}{{"cpus", taskCpus}, {"mem", taskMemMB}} {
		found := false
		for _, r := range o.Resources {
			if r.Name == want.name && r.Scalar != nil && r.Scalar.Value >= want.amount && r.Reservation == nil && len(r.Reservations) == 0 {
				r.Scalar = &v1.Value_Scalar{Value: want.amount}
				t.Resources = append(t.Resources, r)
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("offer %s has no unreserved %s >= %v", o.ID.Value, want.name, want.amount)
		}
	}
	if image != "" {
		t.Container = &v1.ContainerInfo{
			Type: v1.ContainerInfo_DOCKER.Enum(),
			Docker: &v1.ContainerInfo_DockerInfo{
				Image:   image,
				Network: v1.ContainerInfo_DockerInfo_HOST.Enum(),
			},
		}
	}
	t0 := &v0.TaskInfo{}
	if err := bridge(&t, t0); err != nil {
		return nil, err
	}
	return &v0.Offer_Operation{
		Type:   v0.Offer_Operation_LAUNCH.Enum(),
		Launch: &v0.Offer_Operation_Launch{TaskInfos: []*v0.TaskInfo{t0}},
	}, nil
}

func main() {
	master := flag.String("master", "", "host:port or zk://host:port/path")
	rolesFlag := flag.String("roles", "*", "the framework's roles, comma-separated")
	multiRole := flag.Bool("multi-role", false, "MULTI_ROLE even with one role")
	partition := flag.Bool("partition-aware", false, "the PARTITION_AWARE capability")
	failoverTimeout := flag.Float64("failover-timeout", 604800, "FrameworkInfo.failover_timeout, seconds (Marathon's default)")
	frameworkID := flag.String("framework-id", "", "subscribe again with this FrameworkID")
	force := flag.Bool("force", false, "Subscribe.force (a failover) with --framework-id")
	dockerImage := flag.String("docker-image", "", "launch the task as a Docker container of this image")
	updateRetry := flag.Duration("update-retry", 500*time.Millisecond, "the master's status update retry interval (no resend within twice this after the ACK)")
	noTeardown := flag.Bool("no-teardown", false, "end without TEARDOWN")
	stopAfter := flag.String("stop-after", "", "end (without TEARDOWN) right after this check")
	hold := flag.Bool("hold", false, "once the scenario ends, stay alive (printing master messages, taking commands on stdin) until `exit` or the end of stdin")
	expectError := flag.String("expect-error", "", "the FrameworkErrorMessage SUBSCRIBE is expected to get")
	skipRunningAck := flag.Bool("skip-running-ack", false, "leave the first TASK_RUNNING unacknowledged and check that it is resent")
	connectTimeout := flag.Duration("connect-timeout", 5*time.Second, "how long the master may take to accept our connection")
	registerTimeout := flag.Duration("register-timeout", 20*time.Second, "how long registration may take")
	taskTimeout := flag.Duration("task-timeout", 30*time.Second, "how long offers, TASK_RUNNING and TASK_KILLED may take each")
	flag.Parse()
	rand.Seed(time.Now().UnixNano())

	roles := strings.Split(*rolesFlag, ",")
	h := &harness{
		roles:          roles,
		multiRole:      *multiRole || len(roles) > 1,
		partition:      *partition,
		stopAfter:      *stopAfter,
		frameworkID:    *frameworkID,
		hold:           *hold,
		expectError:    *expectError,
		skipRunningAck: *skipRunningAck,
		unknown:        map[string]int{},
		uuids:          map[string]int{},
	}
	if *master == "" {
		h.fatal("flags", "--master is required")
	}

	pid, err := detect(*master, *connectTimeout+10*time.Second)
	if err != nil {
		h.fatal("master_detected", err.Error())
	}
	h.expectedPid = pid
	at := strings.Index(pid, "@")
	if at <= 0 {
		h.fatal("master_detected", fmt.Sprintf("the master's pid %q is not id@ip:port", pid))
	}
	masterAddr := pid[at+1:]

	l, err := listen("scheduler-" + uuid.NewRandom().String())
	if err != nil {
		h.fatal("listen", err.Error())
	}
	h.l = l
	h.link = &link{addr: masterAddr, to: pid[:at], from: l.pid(), responses: map[string]int{}}
	logf("%s -> %s", l.pid(), pid)

	// Connect: a master that is not there fails here, at once, not in a silent retry loop.
	connectUntil := time.Now().Add(*connectTimeout)
	for {
		err = h.link.dial(time.Second)
		if err == nil {
			break
		}
		if time.Now().After(connectUntil) {
			h.fatal("connect", fmt.Sprintf("no TCP connection to %s within %v: %v", masterAddr, *connectTimeout, err))
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.check("connect", true, masterAddr)

	hostname, _ := os.Hostname()
	info, err := h.frameworkInfo(*failoverTimeout, hostname)
	if err != nil {
		h.fatal("framework_info", err.Error())
	}
	ev := h.register(info, *force, *failoverTimeout, *registerTimeout)
	var mi *v0.MasterInfo
	var kind, id string
	if ev.registered != nil {
		kind, id, mi = "registered", ev.registered.GetFrameworkId().GetValue(), ev.registered.GetMasterInfo()
	} else {
		kind, id, mi = "reregistered", ev.rereg.GetFrameworkId().GetValue(), ev.rereg.GetMasterInfo()
	}
	// sched.cpp: a first SUBSCRIBE, or a forced one, is answered by Registered; one with
	// an id and no force by Reregistered.
	wantKind := "registered"
	if *frameworkID != "" && !*force {
		wantKind = "reregistered"
	}
	idOK := id != "" && (*frameworkID == "" || id == *frameworkID)
	h.check("registered", idOK, map[string]interface{}{"message": kind, "framework_id": id, "master": masterJSON(mi)})
	h.check("registered_kind", kind == wantKind, map[string]interface{}{"got": kind, "want": wantKind})
	h.frameworkID = id
	h.check("master_pid", mi.GetPid() == h.expectedPid, map[string]interface{}{"master_info_pid": mi.GetPid(), "expected": h.expectedPid})
	h.check("master_version", versionAtLeast(mi.GetVersion(), [3]int{1, 5, 0}), mi.GetVersion())
	host, port, _ := net.SplitHostPort(masterAddr)
	h.check("master_ip_port", dotted(mi.GetIp()) == host && strconv.Itoa(int(mi.GetPort())) == port,
		map[string]interface{}{"ip": mi.GetIp(), "ip_dotted": dotted(mi.GetIp()), "port": mi.GetPort(), "expected": masterAddr})
	h.check("master_hostname", mi.GetHostname() != "", mi.GetHostname())

	// Offers.
	until := time.Now().Add(*taskTimeout)
	for len(h.offers) == 0 && time.Now().Before(until) {
		ev := h.next(time.Until(until))
		if ev != nil && ev.errorMsg != nil {
			h.fatal("offers", "FrameworkErrorMessage: "+ev.errorMsg.GetMessage())
		}
	}
	if len(h.offers) == 0 {
		h.fatal("offers", fmt.Sprintf("no offer within %v", *taskTimeout))
	}
	h.check("offers", len(h.badOffers) == 0, map[string]interface{}{"offers": len(h.offers), "problems": h.badOffers})

	// ACCEPT with one LAUNCH; the other offers are declined, as Marathon declines what it
	// does not use.
	taskID := "harness." + uuid.NewRandom().String()
	var op *v0.Offer_Operation
	var used v1.Offer
	for _, o := range h.offers {
		if op, err = launchOperation(o, taskID, *dockerImage); err == nil {
			used = o
			break
		}
	}
	if op == nil {
		h.fatal("task_running", err.Error())
	}
	accept := h.call(sched.Call_ACCEPT)
	accept.Accept = &sched.Call_Accept{
		OfferIds:   []*v0.OfferID{{Value: proto.String(used.ID.Value)}},
		Operations: []*v0.Offer_Operation{op},
		Filters:    &v0.Filters{},
	}
	calls := []*sched.Call{accept}
	for _, o := range h.offers {
		if o.ID.Value != used.ID.Value {
			d := h.call(sched.Call_DECLINE)
			d.Decline = &sched.Call_Decline{OfferIds: []*v0.OfferID{{Value: proto.String(o.ID.Value)}}, Filters: &v0.Filters{}}
			calls = append(calls, d)
		}
	}
	h.offers = nil
	if err := h.link.send(calls...); err != nil {
		h.fatal("task_running", "ACCEPT: "+err.Error())
	}
	var early []string
	running := h.waitUpdate(*taskTimeout, func(u *update) bool {
		if u.taskID() != taskID {
			return false
		}
		if isTerminal(u.state()) {
			early = append(early, fmt.Sprintf("%s (%s: %s)", u.state(), u.status.GetReason(), u.status.GetMessage()))
			return true
		}
		return u.state() == v1.TASK_RUNNING
	})
	if running == nil || running.state() != v1.TASK_RUNNING {
		h.fatal("task_running", map[string]interface{}{"task_id": taskID, "within": taskTimeout.String(), "terminal": early, "update": statusJSON(running)})
	}
	up := running.msg.GetUpdate()
	h.check("task_running", up.GetFrameworkId().GetValue() == h.frameworkID && len(up.GetUuid()) > 0 && running.msg.GetPid() != "",
		statusJSON(running))

	runningUUID := uuid.UUID(up.GetUuid()).String()
	if h.skipRunningAck {
		// Not acknowledged: the master sends it again after its retry interval (and that
		// one is acknowledged when it comes in).
		resendWait := 4**updateRetry + 2*time.Second
		again := h.waitUpdate(resendWait, func(u *update) bool {
			return uuid.UUID(u.msg.GetUpdate().GetUuid()).String() == runningUUID && u.at.After(running.at)
		})
		detail := map[string]interface{}{"uuid": runningUUID, "skipped": h.skipped == runningUUID, "within": resendWait.String()}
		if again != nil {
			detail["after_ms"] = again.at.Sub(running.at).Milliseconds()
			detail["update"] = statusJSON(again)
		}
		h.check("resent_unacknowledged", again != nil && h.skipped == runningUUID && again.state() == v1.TASK_RUNNING, detail)
	}

	// The update was acknowledged when it came in (next); it must not come again.
	seen := h.uuids[runningUUID]
	quiet := time.Now().Add(2 * *updateRetry)
	for time.Now().Before(quiet) {
		h.next(time.Until(quiet))
	}
	h.check("acknowledged_not_resent", h.uuids[runningUUID] == seen,
		map[string]interface{}{"uuid": runningUUID, "seen_before_ack": seen, "seen_after": h.uuids[runningUUID], "watched": (2 * *updateRetry).String()})

	// Marathon's pacemaker.
	probe, probeTask, probeAgent := h.pacemaker()
	sent := time.Now()
	if err := h.link.send(probe); err != nil {
		h.fatal("pacemaker", "RECONCILE: "+err.Error())
	}
	answer := h.waitUpdate(5*pacemakerAnswerMax, func(u *update) bool { return u.taskID() == probeTask })
	if answer == nil {
		h.check("pacemaker", false, fmt.Sprintf("no answer to %s within %v", probeTask, 5*pacemakerAnswerMax))
	} else {
		took := answer.at.Sub(sent)
		problem := h.pacemakerProblem(answer, probeAgent)
		if problem == "" && took > pacemakerAnswerMax {
			problem = fmt.Sprintf("answered after %v (want within %v)", took, pacemakerAnswerMax)
		}
		h.check("pacemaker", problem == "", map[string]interface{}{"problem": problem, "ms": took.Milliseconds(), "update": statusJSON(answer)})
	}

	// A pipelined burst: the probes and a REVIVE in one write, before anything is read.
	burst := []*sched.Call{}
	probes := map[string]string{}
	for i := 0; i < burstProbes; i++ {
		c, task, agent := h.pacemaker()
		burst = append(burst, c)
		probes[task] = agent
	}
	burst = append(burst, h.call(sched.Call_REVIVE))
	sent = time.Now()
	if err := h.link.send(burst...); err != nil {
		h.fatal("pipelined_burst", err.Error())
	}
	answered := map[string]bool{}
	var wrong []string
	h.waitUpdate(10*time.Second, func(u *update) bool {
		agent, ok := probes[u.taskID()]
		if ok && !answered[u.taskID()] {
			answered[u.taskID()] = true
			if p := h.pacemakerProblem(u, agent); p != "" && len(wrong) < 5 {
				wrong = append(wrong, u.taskID()+": "+p)
			}
		}
		return len(answered) == burstProbes
	})
	h.check("pipelined_burst", len(answered) == burstProbes && len(wrong) == 0, map[string]interface{}{
		"calls": len(burst), "probes": burstProbes, "answered": len(answered), "problems": wrong, "ms": time.Since(sent).Milliseconds(),
	})

	// KILL.
	kill := h.call(sched.Call_KILL)
	kill.Kill = &sched.Call_Kill{TaskId: &v0.TaskID{Value: proto.String(taskID)}}
	if err := h.link.send(kill); err != nil {
		h.fatal("kill", "KILL: "+err.Error())
	}
	killed := h.waitUpdate(*taskTimeout, func(u *update) bool { return u.taskID() == taskID && isTerminal(u.state()) })
	h.check("kill", killed != nil && killed.state() == v1.TASK_KILLED, statusJSON(killed))

	// Whatever is still on its way (a resend, an error) is seen before the verdicts.
	drain := time.Now().Add(*updateRetry)
	for time.Now().Before(drain) {
		h.next(time.Until(drain))
	}
	h.check("updates_framework_id", len(h.badUpdate) == 0, h.badUpdate)
	h.check("offers_all", len(h.badOffers) == 0, h.badOffers)
	h.check("no_framework_error", len(h.errors) == 0, h.errors)
	h.check("libprocess_from", len(h.fromBad) == 0 && h.messages > 0,
		map[string]interface{}{"messages": h.messages, "expected": h.expectedPid, "mismatches": h.fromBad})
	h.check("known_messages", len(h.unknown) == 0, h.unknown)
	l.mu.Lock()
	refused, dropped, inConns := l.refused, l.dropped, l.connections
	l.mu.Unlock()
	h.check("inbound_messages", len(refused) == 0 && dropped == 0,
		map[string]interface{}{"refused": refused, "dropped": dropped, "connections": inConns})
	h.link.mu.Lock()
	conns, closes, responses := h.link.connections, h.link.closes, h.link.responses
	h.link.mu.Unlock()
	h.check("one_connection", conns == 1 && closes == 0,
		map[string]interface{}{"opened": conns, "closed_under_us": closes, "responses": responses})

	if !*noTeardown {
		err := h.link.send(h.call(sched.Call_TEARDOWN))
		detail := "sent"
		if err != nil {
			detail = err.Error()
		} else if !h.link.waitAnswered(h.link.sentCount(), 5*time.Second) {
			// The master's 202 says the TEARDOWN was received. Exiting before it could
			// close the link first: the master then sees a disconnection, not a TEARDOWN.
			err = errors.New("no answer to the TEARDOWN within 5s")
			detail = err.Error()
		}
		h.check("teardown", err == nil, detail)
	}
	h.finish(!*noTeardown)
}

// holdOn keeps the process alive after the scenario: every master message is printed as
// an {"event": ...} line (updates are acknowledged as before), and commands come on stdin
// until `exit` or its end.
func (h *harness) holdOn() {
	printJSON(map[string]interface{}{"held": true, "framework_id": h.frameworkID})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- strings.TrimSpace(sc.Text())
		}
		close(lines)
	}()
	for {
		select {
		case line, ok := <-lines:
			if !ok || line == "exit" {
				return
			}
			h.command(line)
		case m := <-h.l.inbox:
			if ev := h.receive(m); ev != nil {
				printEvent(ev)
			}
		}
	}
}

// command carries out one stdin command while holding.
func (h *harness) command(line string) {
	fields := strings.Fields(line)
	ack := map[string]interface{}{"ack": line}
	switch {
	case len(fields) == 3 && fields[0] == "reconcile":
		c := h.call(sched.Call_RECONCILE)
		c.Reconcile = &sched.Call_Reconcile{Tasks: []*sched.Call_Reconcile_Task{{
			TaskId:  &v0.TaskID{Value: proto.String(fields[1])},
			SlaveId: &v0.SlaveID{Value: proto.String(fields[2])},
		}}}
		if err := h.link.send(c); err != nil {
			ack["error"] = err.Error()
		}
	default:
		ack["error"] = "unknown command (reconcile TASK AGENT | exit)"
	}
	printJSON(ack)
}

// printEvent prints one master message while holding.
func printEvent(ev *event) {
	switch {
	case ev.update != nil:
		j := statusJSON(ev.update)
		j["event"] = "status"
		printJSON(j)
	case ev.errorMsg != nil:
		printJSON(map[string]interface{}{"event": "error", "message": ev.errorMsg.GetMessage()})
	case ev.lostSlave != nil:
		printJSON(map[string]interface{}{"event": "lost_slave", "agent_id": ev.lostSlave.GetSlaveId().GetValue()})
	case ev.registered != nil:
		printJSON(map[string]interface{}{"event": "registered", "framework_id": ev.registered.GetFrameworkId().GetValue()})
	case ev.rereg != nil:
		printJSON(map[string]interface{}{"event": "reregistered", "framework_id": ev.rereg.GetFrameworkId().GetValue()})
	case ev.offers != nil:
		printJSON(map[string]interface{}{"event": "offers", "count": len(ev.offers.GetOffers())})
	default:
		printJSON(map[string]interface{}{"event": "message", "name": ev.name})
	}
}
