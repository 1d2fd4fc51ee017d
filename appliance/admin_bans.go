package appliance

import (
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/sbc/guard"
)

// BanView is one ban as the admin socket reports it.
type BanView struct {
	guard.Ban
	// RemainingSeconds is the time left, rounded down.
	RemainingSeconds int64 `json:"remaining_seconds"`
}

// BansReply is the answer to a bans command. Error is set when the command
// failed; Bans holds the bans listed, shown, added or removed.
type BansReply struct {
	Error string    `json:"error,omitempty"`
	Bans  []BanView `json:"bans"`
}

func banViews(now time.Time, bans ...guard.Ban) []BanView {
	out := make([]BanView, 0, len(bans))
	for _, b := range bans {
		out = append(out, BanView{Ban: b, RemainingSeconds: int64(b.Remaining(now) / time.Second)})
	}
	return out
}

// adminBans runs "bans list", "bans show ADDR", "bans add ADDR DURATION
// [REASON...]" and "bans remove ADDR".
func adminBans(a *Agent, args []string, log hclog.Logger) BansReply {
	fail := func(msg string) BansReply { return BansReply{Error: msg, Bans: []BanView{}} }
	if a.guard == nil {
		return fail("ban policies are not running")
	}
	if len(args) == 0 {
		return fail("usage: bans list|show ADDR|add ADDR DURATION [REASON]|remove ADDR")
	}
	now := time.Now()
	addr := func() (netip.Addr, bool) {
		if len(args) < 2 {
			return netip.Addr{}, false
		}
		ip, err := netip.ParseAddr(args[1])
		return ip.Unmap(), err == nil && ip.Zone() == ""
	}
	switch args[0] {
	case "list":
		return BansReply{Bans: banViews(now, a.guard.Bans()...)}
	case "show":
		ip, ok := addr()
		if !ok {
			return fail("usage: bans show ADDR (an IPv4 or IPv6 address)")
		}
		b, found := a.guard.Ban(ip)
		if !found {
			return fail(ip.String() + " is not banned")
		}
		return BansReply{Bans: banViews(now, b)}
	case "add":
		ip, ok := addr()
		if !ok || len(args) < 3 {
			return fail("usage: bans add ADDR DURATION [REASON]")
		}
		d, err := config.ParseLongDuration(args[2])
		if err != nil || d <= 0 {
			return fail("invalid duration " + args[2] + ": write a positive duration such as 30m, 6h or 7d")
		}
		reason := "operator"
		if len(args) > 3 {
			reason = strings.Join(args[3:], " ")
		}
		b, err := a.guard.BanNow(ip, d, reason)
		if err != nil {
			return fail(err.Error())
		}
		log.Info("ban added on the admin socket", "src", ip, "ban_for", d.String())
		return BansReply{Bans: banViews(now, b)}
	case "remove":
		ip, ok := addr()
		if !ok {
			return fail("usage: bans remove ADDR")
		}
		b, found := a.guard.Lift(ip)
		if !found {
			return fail(ip.String() + " is not banned")
		}
		log.Info("ban removed on the admin socket", "src", ip)
		return BansReply{Bans: banViews(now, b)}
	}
	return fail("unknown bans command " + args[0] + ": use list, show, add or remove")
}
