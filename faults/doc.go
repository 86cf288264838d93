// Package faults is p2pchat's fault-injection suite. It has no code of its
// own outside its tests: `go test ./faults` builds the p2pchat binary and
// runs real daemons, each in its own Linux network namespace behind a router
// namespace, injects faults (SIGKILL, partitions, packet loss, power cuts,
// full disks, skewed clocks) and checks the product's invariants from
// outside, through the CLI. It needs root and is off unless P2PCHAT_FAULTS=1
// is set (see docs/reliability.md and .ci/run).
package faults
