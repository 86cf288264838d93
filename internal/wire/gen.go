// Package wire holds p2pchat's protobuf wire messages and the one place that
// signs and verifies them. It must never decode a signed body before its
// signature has been verified, and never trust a peer ID it did not derive
// from a verified key.
package wire

//go:generate protoc --go_out=. --go_opt=paths=source_relative wire.proto
