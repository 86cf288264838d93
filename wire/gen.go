// Package wire holds p2pchat's protobuf wire messages and the one place that
// signs and verifies them. It must never decode a signed body before its
// signature has been verified, and never trust a peer ID it did not derive
// from a verified key.
//
// It is public because roster, keyring and gossip take and return its
// types (roster.Decode takes a *wire.Signed): a program outside this module
// that uses those packages must be able to name them. Its types follow
// wire.proto, which docs/protocol.md specifies; the Go API around them
// (Sign, Verify, PeerKey) is the module's and may change with it.
package wire

//go:generate protoc --go_out=. --go_opt=paths=source_relative wire.proto
