//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/hashicorp/go-hclog"
)

// Guard is the kernel side of the ban policies: the allow sets, the ban
// sets with per-element timeouts and the per-source rate limit meters, in
// the chain guard_prerouting of table inet edgesbc.
//
// One goroutine owns the netlink connection; every method hands it an
// operation and waits for the result. Bans that arrive together go to the
// kernel in one batch.
//
// The owner goroutine also remembers what it put into the kernel: the last
// configuration applied and every ban with its end. When the table, or the
// guard's chain or ban sets in it, are removed from outside (a host's
// `nft flush ruleset` on a firewall reload), it puts everything back, bans
// with their remaining time: before its next operation, and at the latest
// after checkEvery.
type Guard struct {
	log  hclog.Logger
	ops  chan guardOp
	done chan struct{}
	once sync.Once

	// Owned by run.
	every time.Duration
	cfg   *GuardConfig             // last applied; nil before the first Apply
	bans  map[netip.Addr]time.Time // ban ends, as sent to the kernel
}

// guardCheckEvery is how often the guard looks for its objects when it has
// nothing else to do.
const guardCheckEvery = 10 * time.Second

type guardOp struct {
	apply *GuardConfig
	ban   *netip.Addr
	d     time.Duration
	unban bool
	close bool
	reply chan error
}

// maxBatch bounds the bans sent in one netlink batch.
const maxBatch = 256

// NewGuard opens a netlink connection to nftables and checks it can manage
// the table: the caller falls back to userspace enforcement on an error
// (ErrUnsupported wrapped with the reason for a missing CAP_NET_ADMIN or
// nf_tables).
func NewGuard(log hclog.Logger) (*Guard, error) {
	return newGuard(log, guardCheckEvery)
}

func newGuard(log hclog.Logger, every time.Duration, opts ...nftables.ConnOption) (*Guard, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: open netlink: %v", ErrUnsupported, err)
	}
	// Creating the table (never flushing it) is the probe: it needs
	// CAP_NET_ADMIN and nf_tables, and it is needed anyway.
	conn.AddTable(edgesbcTable())
	if err := conn.Flush(); err != nil {
		_ = conn.CloseLasting()
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("%w: create table inet %s: %v (needs CAP_NET_ADMIN)", ErrUnsupported, TableName, err)
		}
		return nil, fmt.Errorf("%w: create table inet %s: %v", ErrUnsupported, TableName, err)
	}
	g := &Guard{log: log, ops: make(chan guardOp, maxBatch), done: make(chan struct{}),
		every: every, bans: make(map[netip.Addr]time.Time)}
	go g.run(conn)
	return g, nil
}

// Apply installs or replaces the guard's chain, allow sets and meters. The
// ban sets and their elements are kept.
func (g *Guard) Apply(cfg GuardConfig) error {
	return g.do(guardOp{apply: &cfg})
}

// Ban adds src to the ban set of its family for d; the kernel drops the
// element when d ends. Banning a banned address renews the timeout.
func (g *Guard) Ban(src netip.Addr, d time.Duration) error {
	return g.do(guardOp{ban: &src, d: d})
}

// Unban removes src from the ban sets. Removing an address that is not
// there is not an error.
func (g *Guard) Unban(src netip.Addr) error {
	return g.do(guardOp{ban: &src, unban: true})
}

// Close removes the guard's objects from the table (never the table itself,
// which other subsystems share) and stops the goroutine.
func (g *Guard) Close() error {
	var err error
	g.once.Do(func() {
		err = g.do(guardOp{close: true})
		<-g.done
	})
	return err
}

func (g *Guard) do(op guardOp) error {
	op.reply = make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case g.ops <- op:
	case <-g.done:
		return errors.New("firewall: guard closed")
	case <-ctx.Done():
		return errors.New("firewall: guard busy")
	}
	select {
	case err := <-op.reply:
		return err
	case <-ctx.Done():
		return errors.New("firewall: no answer from the netlink goroutine")
	}
}

// run owns conn. It takes one operation, then any bans already waiting,
// and sends them as one batch.
func (g *Guard) run(conn *nftables.Conn) {
	defer close(g.done)
	defer conn.CloseLasting()
	check := time.NewTicker(g.every)
	defer check.Stop()
	var pending *guardOp
	for {
		var op guardOp
		if pending != nil {
			op, pending = *pending, nil
		} else {
			select {
			case op = <-g.ops:
			case <-check.C:
				g.ensure(conn)
				continue
			}
		}
		switch {
		case op.close:
			op.reply <- g.remove(conn)
			return
		case op.apply != nil:
			lost := g.cfg != nil && !g.present(conn)
			err := g.apply(conn, *op.apply)
			if err == nil {
				g.cfg = op.apply
				if lost {
					err = g.restoreBans(conn)
				}
			}
			op.reply <- err
		case op.unban:
			g.ensure(conn)
			err := g.unban(conn, *op.ban)
			if err == nil {
				delete(g.bans, MaskSource(*op.ban, g.ipv6Bits()))
			}
			op.reply <- err
		default:
			g.ensure(conn)
			batch := []guardOp{op}
		drain:
			for len(batch) < maxBatch {
				select {
				case o := <-g.ops:
					if o.ban == nil || o.unban {
						pending = &o // after this batch, in order
						break drain
					}
					batch = append(batch, o)
				default:
					break drain
				}
			}
			err := g.addBans(conn, batch)
			if err == nil {
				now := time.Now()
				for _, b := range batch {
					g.bans[MaskSource(*b.ban, g.ipv6Bits())] = now.Add(banTimeout(b.d))
				}
			}
			for _, b := range batch {
				b.reply <- err
			}
		}
	}
}

// ipv6Bits is the IPv6 prefix of the applied configuration. Owned by run.
func (g *Guard) ipv6Bits() int {
	if g.cfg == nil {
		return DefaultIPv6Prefix
	}
	return g.cfg.ipv6Bits()
}

// present reports whether the guard's chain and ban sets are in the
// kernel. A failed lookup counts as absent.
func (g *Guard) present(conn *nftables.Conn) bool {
	t := edgesbcTable()
	if _, err := conn.ListChain(t, guardChain); err != nil {
		return false
	}
	for _, name := range []string{ban4Set, ban6Set} {
		if _, err := conn.GetSetByName(t, name); err != nil {
			return false
		}
	}
	return true
}

// ensure rebuilds the guard's objects, with the last configuration and the
// bans still running, when they were removed from outside. Before the
// first Apply there is nothing to rebuild.
func (g *Guard) ensure(conn *nftables.Conn) {
	now := time.Now()
	for a, end := range g.bans {
		if !end.After(now) {
			delete(g.bans, a) // the kernel has dropped it too
		}
	}
	if g.cfg == nil || g.present(conn) {
		return
	}
	err := g.apply(conn, *g.cfg)
	if err == nil {
		err = g.restoreBans(conn)
	}
	if err != nil {
		g.log.Error("guard objects were removed from the table and cannot be rebuilt: bans hold in userspace only", "table", "inet "+TableName, "error", err)
		return
	}
	g.log.Warn("guard objects were removed from outside: rebuilt them", "table", "inet "+TableName, "bans", len(g.bans))
}

// restoreBans adds every ban still running with its remaining time.
func (g *Guard) restoreBans(conn *nftables.Conn) error {
	now := time.Now()
	var ops []guardOp
	for a, end := range g.bans {
		if left := end.Sub(now); left > 0 {
			ops = append(ops, guardOp{ban: &a, d: left})
		}
	}
	if len(ops) == 0 {
		return nil
	}
	return g.addBans(conn, ops)
}

// apply sends the whole guard ruleset in one batch: the chain is flushed
// and refilled, the allow sets replaced, meters of rate limits that are
// gone deleted, and the ban sets created if missing (never flushed).
func (g *Guard) apply(conn *nftables.Conn, cfg GuardConfig) error {
	rs, err := buildGuard(cfg)
	if err != nil {
		return err
	}
	existing := map[string]bool{}
	if sets, err := conn.GetSets(rs.table); err == nil {
		for _, s := range sets {
			existing[s.Name] = true
		}
	}
	conn.AddTable(rs.table)
	conn.AddChain(rs.chain)
	conn.FlushChain(rs.chain)
	for name := range existing {
		if strings.HasPrefix(name, meterPref) {
			// meters are rebuilt, so a changed rate takes effect at once
			conn.DelSet(&nftables.Set{Table: rs.table, Name: name})
		}
	}
	for _, s := range rs.sets {
		if err := conn.AddSet(s.set, nil); err != nil {
			return fmt.Errorf("add set %s: %w", s.set.Name, err)
		}
		if s.flush {
			conn.FlushSet(s.set)
		}
		if len(s.elems) > 0 {
			if err := conn.SetAddElements(s.set, s.elems); err != nil {
				return fmt.Errorf("add elements to set %s: %w", s.set.Name, err)
			}
		}
	}
	for _, r := range rs.rules {
		conn.AddRule(&nftables.Rule{Table: rs.table, Chain: rs.chain, Exprs: r})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("apply guard rules to table inet %s: %w", TableName, err)
	}
	g.log.Debug("guard rules applied", "allow", len(cfg.Allow), "rate_limits", len(cfg.RateLimits))
	return nil
}

// addBans adds a batch of ban elements in one Flush.
func (g *Guard) addBans(conn *nftables.Conn, ops []guardOp) error {
	t := edgesbcTable()
	bySet := map[string][]nftables.SetElement{}
	for _, op := range ops {
		set, el := banElement(*op.ban, op.d, g.ipv6Bits())
		bySet[set] = append(bySet[set], el)
	}
	sets := map[string]*nftables.Set{}
	for name, els := range bySet {
		s := &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIPAddr, HasTimeout: true}
		if name == ban6Set {
			s.KeyType = nftables.TypeIP6Addr
		}
		sets[name] = s
		// delete first so a renewed ban gets its new timeout: adding an
		// element that exists keeps the old one
		for _, el := range els {
			g.deleteElement(conn, s, el)
		}
	}
	// Every delete is flushed by now, each on its own: the adds go in one
	// batch that no failed delete can take down with it.
	for name, els := range bySet {
		if err := conn.SetAddElements(sets[name], els); err != nil {
			return fmt.Errorf("ban %d addresses: %w", len(els), err)
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("ban %d addresses in table inet %s: %w", len(ops), TableName, err)
	}
	return nil
}

// deleteElement removes one element in its own batch, ignoring "not
// there": a failed delete would fail every change batched with it.
func (g *Guard) deleteElement(conn *nftables.Conn, s *nftables.Set, el nftables.SetElement) {
	if err := conn.SetDeleteElements(s, []nftables.SetElement{{Key: el.Key}}); err != nil {
		return
	}
	_ = conn.Flush()
}

func (g *Guard) unban(conn *nftables.Conn, a netip.Addr) error {
	name, el := banElement(a, time.Second, g.ipv6Bits())
	s := &nftables.Set{Table: edgesbcTable(), Name: name, KeyType: nftables.TypeIPAddr, HasTimeout: true}
	if name == ban6Set {
		s.KeyType = nftables.TypeIP6Addr
	}
	if err := conn.SetDeleteElements(s, []nftables.SetElement{{Key: el.Key}}); err != nil {
		return fmt.Errorf("unban %v: %w", a, err)
	}
	if err := conn.Flush(); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("unban %v: %w", a, err)
	}
	return nil
}

// remove deletes the guard's chain, then its sets, in one batch.
func (g *Guard) remove(conn *nftables.Conn) error {
	t := edgesbcTable()
	if _, err := conn.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		return nil // removed from outside: nothing of ours is left
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list chains of inet %s: %w", TableName, err)
	}
	for _, c := range chains {
		if c.Table.Name == TableName && c.Name == guardChain {
			conn.FlushChain(c)
			conn.DelChain(c)
		}
	}
	sets, err := conn.GetSets(t)
	if err != nil {
		return fmt.Errorf("list sets of inet %s: %w", TableName, err)
	}
	for _, s := range sets {
		if isGuardSet(s.Name) {
			conn.DelSet(&nftables.Set{Table: t, Name: s.Name})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("remove guard objects from inet %s: %w", TableName, err)
	}
	return nil
}

func isGuardSet(name string) bool {
	switch name {
	case allow4Set, allow6Set, ban4Set, ban6Set:
		return true
	}
	return strings.HasPrefix(name, meterPref)
}
