package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/p2pchat/p2pchat/internal/atomicfile"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/gologshim"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pchat/p2pchat/client"
	"github.com/p2pchat/p2pchat/internal/localapi"
	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/store"
)

func runDaemon(e *env, args []string) error {
	f := newFlags(e, "daemon", true)
	var listen, bootstrap multiFlag
	f.Var(&listen, "listen", "multiaddr to listen on (repeatable)")
	f.Var(&bootstrap, "bootstrap", "multiaddr of a peer to connect to at start (repeatable)")
	apiAddr := f.String("api", "127.0.0.1:0", "host:port for the local API (loopback)")
	noMDNS := f.Bool("no-mdns", false, "do not discover peers on the LAN")
	logLevel := f.String("log-level", "error", "log level: debug, info, warn or error")
	minFree := f.Uint64("min-free-disk", store.DefaultMinFree>>20, "MiB of free disk space to keep in the home's filesystem: below it sends and other writes are refused (nothing is lost; they resume when space returns)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	if *minFree == 0 || *minFree > 1<<20 {
		return fmt.Errorf("%w: --min-free-disk %d: want 1 to %d MiB", errUsage, *minFree, 1<<20)
	}
	home := *f.home

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("%w: bad --log-level %q", errUsage, *logLevel)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	// libp2p's own logs: off unless asked for with --log-level debug (their
	// levels per subsystem then follow $GOLOG_LOG_LEVEL, default error).
	if level <= slog.LevelDebug {
		gologshim.SetDefaultHandler(log.Handler())
	} else {
		gologshim.SetDefaultHandler(slog.DiscardHandler)
	}

	for _, l := range listen {
		if _, err := ma.NewMultiaddr(l); err != nil {
			return fmt.Errorf("%w: malformed --listen multiaddr %q", errUsage, l)
		}
	}
	var boot []peer.AddrInfo
	for _, b := range bootstrap {
		m, err := ma.NewMultiaddr(b)
		if err != nil {
			return fmt.Errorf("%w: malformed --bootstrap multiaddr %q", errUsage, b)
		}
		ai, err := peer.AddrInfoFromP2pAddr(m)
		if err != nil {
			return fmt.Errorf("%w: --bootstrap multiaddr %q has no /p2p/ peer id", errUsage, b)
		}
		boot = append(boot, *ai)
	}
	host, _, err := net.SplitHostPort(*apiAddr)
	if err != nil {
		return fmt.Errorf("%w: bad --api %q: want HOST:PORT", errUsage, *apiAddr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%w: --api must be a loopback address, not %q", errUsage, host)
	}

	if err := os.MkdirAll(home, 0o700); err != nil {
		return fmt.Errorf("create home %s: %w", home, err)
	}
	unlock, err := lockHome(home)
	if err != nil {
		return err
	}
	defer unlock()

	ctx, stop := commandContext(0)
	defer stop()
	// P2PCHAT_TEST_CLOCK_OFFSET (a Go duration, e.g. -2h) makes the daemon
	// stamp what it sends as a machine with a clock that far off would: for
	// the fault-injection tests of skewed clocks only.
	var offset time.Duration
	if v := os.Getenv("P2PCHAT_TEST_CLOCK_OFFSET"); v != "" {
		if offset, err = time.ParseDuration(v); err != nil {
			return fmt.Errorf("bad P2PCHAT_TEST_CLOCK_OFFSET %q: want a duration such as -2h", v)
		}
	}
	n, err := node.New(ctx, node.Config{Dir: home, ListenAddrs: listen, Logger: log, MDNS: !*noMDNS, Bootstrap: boot,
		MinFreeDisk: *minFree << 20, ClockOffset: offset})
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			_ = n.Close()
		}
	}()

	ln, err := net.Listen("tcp", *apiAddr)
	if err != nil {
		return fmt.Errorf("listen on %s for the api: %w", *apiAddr, err)
	}
	token, err := newToken()
	if err != nil {
		return err
	}
	api := localapi.New(n, token, log)
	defer api.Close()
	srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	// The token first, then the address: a client that sees the address
	// always finds the token.
	if err := atomicfile.Write(filepath.Join(home, client.TokenFile), []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(home, client.APIFile), []byte(ln.Addr().String()+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(home, client.APIFile))

	fmt.Fprintf(e.stdout, "p2pchat daemon running\n  peer id: %s\n  api:     http://%s\n  home:    %s\n", n.ID(), ln.Addr(), home)
	for _, a := range n.Host().Addrs() {
		fmt.Fprintf(e.stdout, "  listen:  %s/p2p/%s\n", a, n.ID())
	}

	select {
	case <-ctx.Done():
	case err := <-served:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("api server: %w", err)
		}
	}
	fmt.Fprintln(e.stdout, "p2pchat daemon stopping")
	api.Close() // ends event streams so Shutdown does not wait on them
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	closed = true
	if err := n.Close(); err != nil {
		// One line, and a non-zero exit: the home may have turned
		// read-only or the disk be full; what was written before is safe.
		return fmt.Errorf("stopping: %w", err)
	}
	return nil
}

func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// errAlreadyRunning is returned when another daemon holds the home.
var errAlreadyRunning = errors.New("another p2pchat daemon is already running with this home")

func alreadyRunning(home string) error {
	return fmt.Errorf("%w (%s); stop it first or use another --home", errAlreadyRunning, strings.TrimRight(home, "/"))
}
