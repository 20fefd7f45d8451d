// zkdetect: the ZooKeeper master detector of Debian's mesos-go
// (golang-github-mesos-mesos-go-dev, api/v0/detector/zoo), as a v0 framework uses it to
// find the leading master behind `--master zk://host:port/path`.
//
// It prints one line per leader change, flushed at once:
//
//	MASTER <pid> <id> <hostname> <port> <ip as a dotted quad> <version>
//	NONE
//
// and exits 0 when the deadline passes (or 1 with a line starting "FAIL:").
//
// Build (no network): GO111MODULE=off GOPATH=<dir>:/usr/share/gocode go build
//
// Usage: zkdetect [-deadline 60s] zk://host:port/path
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/mesos/mesos-go/api/v0/detector"
	"github.com/mesos/mesos-go/api/v0/detector/zoo"
	mesos "github.com/mesos/mesos-go/api/v0/mesosproto"
)

func main() {
	deadline := flag.Duration("deadline", 60*time.Second, "exit after this long")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Println("FAIL: usage: zkdetect [-deadline 60s] zk://host:port/path")
		os.Exit(1)
	}
	md, err := zoo.NewMasterDetector(flag.Arg(0))
	if err != nil {
		fmt.Printf("FAIL: detector: %v\n", err)
		os.Exit(1)
	}
	err = md.Detect(detector.OnMasterChanged(func(mi *mesos.MasterInfo) {
		if mi == nil {
			fmt.Println("NONE")
			return
		}
		// MasterInfo.ip is the IPv4 address in network byte order read as a uint32.
		ip := mi.GetIp()
		dotted := net.IPv4(byte(ip), byte(ip>>8), byte(ip>>16), byte(ip>>24)).String()
		fmt.Printf("MASTER %s %s %s %d %s %s\n", mi.GetPid(), mi.GetId(), mi.GetHostname(),
			mi.GetPort(), dotted, mi.GetVersion())
	}))
	if err != nil {
		fmt.Printf("FAIL: detect: %v\n", err)
		os.Exit(1)
	}
	select {
	case <-md.Done():
		fmt.Println("FAIL: the detector stopped")
		os.Exit(1)
	case <-time.After(*deadline):
	}
}
