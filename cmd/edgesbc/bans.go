package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/appliance"
	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/sbc/guard"
)

// reloadOnHangup validates the config file again on every SIGHUP and hands
// a valid one to the daemon. A file with errors is rejected with its
// file:line:col diagnostics, and the running policy stays.
func reloadOnHangup(ctx context.Context, path string, stderr io.Writer, log hclog.Logger) <-chan *config.Config {
	out := make(chan *config.Config)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("reloading configuration", "path", path)
				cfg := load(path, stderr)
				if cfg == nil {
					log.Error("configuration reload rejected, the running policy stays", "path", path)
					continue
				}
				select {
				case out <- cfg:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

const bansUsage = `usage: edgesbc bans list [--json]
       edgesbc bans show ADDR [--json]
       edgesbc bans add ADDR --for DURATION [--reason TEXT] [--json]
       edgesbc bans remove ADDR [--json]
flags: -admin SOCKET (default ` + defaultAdmin + `)`

// cmdBans manages the running daemon's bans over the admin socket. Flags
// may come before or after the address.
func cmdBans(args []string, stdout, stderr io.Writer) int {
	var (
		pos    []string
		asJSON bool
		dur    string
		reason string
		admin  = defaultAdmin
	)
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			pos = append(pos, a)
			continue
		}
		need := func() (string, bool) {
			if hasVal {
				return val, true
			}
			if i+1 < len(args) {
				i++
				return args[i], true
			}
			return "", false
		}
		var ok bool
		switch name {
		case "json":
			asJSON, ok = true, !hasVal
		case "for":
			dur, ok = need()
		case "reason":
			reason, ok = need()
		case "admin":
			admin, ok = need()
		case "h", "help":
			fmt.Fprintln(stdout, bansUsage)
			return 0
		}
		if !ok {
			fmt.Fprintf(stderr, "edgesbc bans: bad flag %s\n%s\n", a, bansUsage)
			return 2
		}
	}
	if len(pos) == 0 {
		fmt.Fprintln(stderr, bansUsage)
		return 2
	}
	var cmd string
	switch verb := pos[0]; {
	case verb == "list" && len(pos) == 1:
		cmd = "bans list"
	case (verb == "show" || verb == "remove") && len(pos) == 2:
		cmd = "bans " + verb + " " + pos[1]
	case verb == "add" && len(pos) == 2 && dur != "":
		cmd = "bans add " + pos[1] + " " + dur
		if r := strings.Join(strings.Fields(reason), " "); r != "" {
			cmd += " " + r
		}
	default:
		fmt.Fprintln(stderr, bansUsage)
		return 2
	}
	if len(pos) == 2 {
		if _, err := netip.ParseAddr(pos[1]); err != nil {
			fmt.Fprintf(stderr, "edgesbc bans: %q is not an IP address\n", pos[1])
			return 2
		}
	}
	out, err := adminCommand(admin, cmd)
	if err != nil {
		fmt.Fprintf(stderr, "edgesbc: %v\n", err)
		return 1
	}
	var reply appliance.BansReply
	if err := json.Unmarshal(out, &reply); err != nil {
		fmt.Fprintf(stderr, "edgesbc: unexpected reply from the daemon: %v\n", err)
		return 1
	}
	if asJSON {
		_, _ = stdout.Write(out)
	}
	if reply.Error != "" {
		fmt.Fprintf(stderr, "edgesbc bans: %s\n", reply.Error)
		return 1
	}
	if !asJSON {
		printBans(stdout, pos[0], reply.Bans)
	}
	return 0
}

func printBans(w io.Writer, verb string, bans []appliance.BanView) {
	switch verb {
	case "add":
		for _, b := range bans {
			fmt.Fprintf(w, "banned %s until %s\n", banned(b), b.Expires.Local().Format(time.RFC3339))
		}
		return
	case "remove":
		for _, b := range bans {
			fmt.Fprintf(w, "ban of %s lifted (policy %s)\n", banned(b), b.Policy)
		}
		return
	case "show":
		for _, b := range bans {
			fmt.Fprintf(w, "address:   %v\n", b.Addr)
			if b.Prefix.IsValid() {
				fmt.Fprintf(w, "prefix:    %v (every address in it is banned)\n", b.Prefix)
			}
			fmt.Fprintf(w, "policy:    %s\nreason:    %s\n", b.Policy, b.Reason)
			if len(b.Counters) > 0 {
				fmt.Fprintf(w, "counters:  %v\n", b.Counters)
			}
			fmt.Fprintf(w, "banned:    %s\nexpires:   %s (in %v)\n", b.Start.Local().Format(time.RFC3339),
				b.Expires.Local().Format(time.RFC3339), time.Duration(b.RemainingSeconds)*time.Second)
			if b.Repeat > 0 {
				fmt.Fprintf(w, "repeat:    %d earlier ban(s) by this policy\n", b.Repeat)
			}
			if b.First.Request != "" {
				fmt.Fprintf(w, "first:     %s %s\nlast:      %s %s\n", b.First.At.Local().Format(time.RFC3339), offence(b.First),
					b.Last.At.Local().Format(time.RFC3339), offence(b.Last))
			}
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tPOLICY\tREMAINING\tREASON")
	for _, b := range bans {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", banned(b), b.Policy, time.Duration(b.RemainingSeconds)*time.Second, b.Reason)
	}
	_ = tw.Flush()
}

// banned is what a ban covers: its IPv6 prefix, else its address.
func banned(b appliance.BanView) string {
	if b.Prefix.IsValid() {
		return b.Prefix.String()
	}
	return b.Addr.String()
}

// offence renders one offending request, with the response it got.
func offence(o guard.Offence) string {
	if o.Code != 0 {
		return fmt.Sprintf("%s -> %d", o.Request, o.Code)
	}
	return o.Request
}
