// Package cli implements the p2pchat command: the daemon, the commands that
// talk to it through package client, the chat screen and the demo. Each
// command writes to the writers it is given and reports failure as one line
// on stderr ("p2pchat: error: ...") and a non-zero exit, never a stack trace.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/p2pchat/p2pchat/client"
)

// env carries a command's inputs and outputs.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

type command struct {
	name, args, help string
	run              func(e *env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"daemon", "[--home DIR] [--listen MULTIADDR]... [--api HOST:PORT] [--no-mdns] [--bootstrap MULTIADDR]... [--log-level LEVEL]", "run the node in the foreground", runDaemon},
		{"id", "[--json]", "print this node's peer ID and addresses", runID},
		{"connect", "MULTIADDR", "connect to a peer", runConnect},
		{"peers", "[--json]", "list connected peers", runPeers},
		{"group", "create|invite|join|remove|leave|list|info ...", "manage groups (see 'p2pchat group help')", runGroup},
		{"send", "GROUP TEXT...", "send a message", runSend},
		{"messages", "GROUP [--json] [--follow]", "print a group's messages", runMessages},
		{"chat", "GROUP", "open the interactive chat screen", runChat},
		{"demo", "", "run a narrated demo of 4 nodes on loopback", runDemo},
	}
}

// errUsage marks an error in how the command was called (exit code 2).
// Wrapped as fmt.Errorf("%w...", errUsage), its own text is dropped from
// the message: "p2pchat: error: send takes GROUP and TEXT".
var errUsage = usageMarker{}

type usageMarker struct{}

func (usageMarker) Error() string { return "" }

// Main runs the command line args and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(e, args[1:])
			if err == nil {
				return 0
			}
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			fmt.Fprintf(stderr, "p2pchat: error: %s\n", oneLine(err))
			if errors.Is(err, errUsage) {
				fmt.Fprintln(stderr, strings.TrimSpace("usage: p2pchat "+c.name+" "+c.args))
				return 2
			}
			return 1
		}
	}
	fmt.Fprintf(stderr, "p2pchat: error: unknown command %q (see 'p2pchat help')\n", args[0])
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "p2pchat: serverless, end-to-end encrypted group chat")
	fmt.Fprintln(w, "\nusage: p2pchat COMMAND [ARGS]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n            %s\n", c.name, c.help, c.args)
	}
	fmt.Fprintln(w, "\nEvery command but demo takes --home DIR (or $P2PCHAT_HOME; default: the")
	fmt.Fprintln(w, "p2pchat folder in your config directory) to find its daemon.")
	fmt.Fprintln(w, "GROUP is a group ID or an unambiguous group name.")
}

// oneLine flattens an error message to a single line.
func oneLine(err error) string {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	msg = strings.TrimPrefix(msg, ": ") // a usage error's empty marker
	return strings.TrimSuffix(msg, ".")
}

// defaultHome is $P2PCHAT_HOME or the p2pchat folder in the config dir.
func defaultHome() string {
	if h := os.Getenv("P2PCHAT_HOME"); h != "" {
		return h
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		dir = "."
	}
	return filepath.Join(dir, "p2pchat")
}

// flags is a flag set that accepts flags anywhere among the arguments.
type flags struct {
	*flag.FlagSet
	home *string
}

func newFlags(e *env, name string, withHome bool) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := &flags{FlagSet: fs}
	if withHome {
		f.home = fs.String("home", defaultHome(), "home directory of the daemon")
	}
	return f
}

// parse parses flags interspersed with positional arguments.
func (f *flags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = f.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// dial returns a client for the daemon in home.
func dial(home string) (*client.Client, error) {
	return client.New(home)
}

// dialWith parses args, requires exactly want positional arguments (else a
// usage error saying what), and returns a client for the daemon in --home.
func (f *flags) dialWith(args []string, want int, what string) (*client.Client, []string, error) {
	pos, err := f.parse(args)
	if err != nil {
		return nil, nil, err
	}
	if len(pos) != want {
		if want == 0 {
			return nil, nil, fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
		}
		return nil, nil, fmt.Errorf("%w: %s", errUsage, what)
	}
	c, err := dial(*f.home)
	return c, pos, err
}

// commandContext is cancelled by SIGINT/SIGTERM or after timeout (0: none).
func commandContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if timeout <= 0 {
		return ctx, stop
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	return tctx, func() { cancel(); stop() }
}

// apiTimeout bounds one call to the daemon.
const apiTimeout = 45 * time.Second
