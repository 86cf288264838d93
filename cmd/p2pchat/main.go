// Command p2pchat runs a p2pchat node as a daemon and talks to it: see
// `p2pchat help`.
package main

import (
	"os"

	"github.com/p2pchat/p2pchat/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
