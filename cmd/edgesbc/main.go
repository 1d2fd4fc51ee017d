// Command edgesbc is the edgesbc Session Border Controller.
//
//	edgesbc run    -config FILE [-admin SOCKET]   run the daemon
//	edgesbc check  -config FILE                   validate a config file and exit
//	edgesbc status [-admin SOCKET]                print the running daemon's status as JSON
//	edgesbc bans list|show ADDR|add ADDR --for DUR|remove ADDR [--json] [-admin SOCKET]
//	edgesbc example                               print the embedded example config
//	edgesbc version
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/appliance"
	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/examples"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const (
	defaultConfig = "/etc/edgesbc/edgesbc.hcl"
	defaultAdmin  = "/run/edgesbc/admin.sock"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, `usage: edgesbc <command> [flags]

commands:
  run      run the daemon            (-config FILE, -admin SOCKET)
  check    validate a config file    (-config FILE)
  status   print daemon status JSON  (-admin SOCKET)
  bans     list|show ADDR|add ADDR --for DUR [--reason TEXT]|remove ADDR  (--json, -admin SOCKET)
  example  print the embedded example configuration
  version  print the version`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", defaultConfig, "configuration file (HCL)")
	admin := fs.String("admin", defaultAdmin, "admin unix socket path (empty disables it)")
	switch cmd {
	case "run":
		if err := fs.Parse(args); err != nil {
			return 2
		}
		return cmdRun(*cfgPath, *admin, stderr)
	case "check":
		if err := fs.Parse(args); err != nil {
			return 2
		}
		return cmdCheck(*cfgPath, stdout, stderr)
	case "status":
		if err := fs.Parse(args); err != nil {
			return 2
		}
		return cmdStatus(*admin, stdout, stderr)
	case "bans":
		return cmdBans(args, stdout, stderr)
	case "example":
		_, _ = stdout.Write(examples.Default)
		return 0
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "edgesbc", version)
		return 0
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "edgesbc: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

// load parses and validates a config file, printing every problem as
// file:line:col. It returns nil when the file is not usable.
func load(path string, stderr io.Writer) *config.Config {
	cfg, files, diags := config.Load(path)
	if len(diags) > 0 {
		_ = config.WriteDiagnostics(stderr, files, diags)
	}
	if diags.HasErrors() {
		return nil
	}
	if u := appliance.Unsupported(cfg); len(u) > 0 {
		for _, msg := range u {
			fmt.Fprintf(stderr, "%s: error: %s\n", path, msg)
		}
		return nil
	}
	return cfg
}

func cmdCheck(path string, stdout, stderr io.Writer) int {
	cfg := load(path, stderr)
	if cfg == nil {
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d zones, %d peers)\n", path, len(cfg.Zones), len(cfg.Peers))
	return 0
}

func cmdRun(path, admin string, stderr io.Writer) int {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return cmdSafe(path, admin, stderr)
	}
	cfg := load(path, stderr)
	if cfg == nil {
		fmt.Fprintln(stderr, "edgesbc: configuration has errors, not starting")
		return 1
	}
	log := hclog.New(&hclog.LoggerOptions{
		Name:   "edgesbc",
		Level:  hclog.LevelFromString(cfg.Log.Level),
		Output: stderr,
	})
	if path := os.Getenv("EDGESBC_CPUPROFILE"); path != "" {
		// profiling hook for make bench: the profile covers the whole run
		if stop, err := startCPUProfile(path); err != nil {
			log.Warn("cpu profile not started", "path", path, "error", err)
		} else {
			defer stop()
		}
	}
	if path := os.Getenv("EDGESBC_HEAPPROFILE"); path != "" {
		// profiling hook for make bench: SIGUSR1 writes a heap profile
		stop := heapProfileOnSignal(path, log)
		defer stop()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if admin != "" {
		if err := os.MkdirAll(dirOf(admin), 0o750); err != nil {
			log.Error("create admin socket directory", "path", admin, "error", err)
			return 1
		}
	}
	reload := reloadOnHangup(ctx, path, stderr, log)
	if err := appliance.Run(ctx, cfg, appliance.Options{AdminSocket: admin, Reload: reload}, log); err != nil {
		log.Error("edgesbc stopped with error", "error", err)
		return 1
	}
	return 0
}

// cmdSafe runs the daemon without a configuration file: admin socket only,
// no SIP (first boot of an appliance image).
func cmdSafe(path, admin string, stderr io.Writer) int {
	log := hclog.New(&hclog.LoggerOptions{Name: "edgesbc", Level: hclog.Info, Output: stderr})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if admin != "" {
		if err := os.MkdirAll(dirOf(admin), 0o750); err != nil {
			log.Error("create admin socket directory", "path", admin, "error", err)
			return 1
		}
	}
	if err := appliance.RunSafe(ctx, path, appliance.Options{AdminSocket: admin}, log); err != nil {
		log.Error("edgesbc stopped with error", "error", err)
		return 1
	}
	return 0
}

func dirOf(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			if i == 0 {
				return "/"
			}
			return p[:i]
		}
	}
	return "."
}

func cmdStatus(admin string, stdout, stderr io.Writer) int {
	out, err := adminCommand(admin, "status")
	if err != nil {
		fmt.Fprintf(stderr, "edgesbc: %v\n", err)
		return 1
	}
	_, _ = stdout.Write(out)
	return 0
}

func adminCommand(path, cmd string) ([]byte, error) {
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to admin socket %s: %w", path, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "%s\n", cmd); err != nil {
		return nil, fmt.Errorf("send %q: %w", cmd, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read reply to %q: %w", cmd, err)
	}
	return line, nil
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create profile %s: %w", path, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("start cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func heapProfileOnSignal(path string, log hclog.Logger) func() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-ch:
				f, err := os.Create(path)
				if err != nil {
					log.Warn("heap profile not written", "path", path, "error", err)
					continue
				}
				if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
					log.Warn("heap profile not written", "path", path, "error", err)
				}
				f.Close()
				log.Info("heap profile written", "path", path)
				// the runtime's own accounting beside it: stacks and
				// retained spans are not in the heap profile
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				line := fmt.Sprintf("%s goroutines=%d heap_alloc=%d heap_inuse=%d heap_sys=%d heap_released=%d stack_inuse=%d sys=%d gc=%d\n",
					time.Now().Format(time.RFC3339Nano), runtime.NumGoroutine(), ms.HeapAlloc, ms.HeapInuse,
					ms.HeapSys, ms.HeapReleased, ms.StackInuse, ms.Sys, ms.NumGC)
				if err := appendFile(path+".memstats", line); err != nil {
					log.Warn("memory statistics not written", "path", path+".memstats", "error", err)
				}
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
