//go:build linux

package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/hashicorp/go-hclog"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/edgesbc/edgesbc/media"
)

// netlinkBuffer is the netlink socket buffer for nftables transactions: the
// default is too small for one message holding thousands of set elements
// ("message too long"); 16 MB carries well over 10,000 flows in one atomic
// commit.
const netlinkBuffer = 16 << 20

// DefaultBatch is MediaConfig.Batch's default.
const DefaultBatch = 2000

// Media is kernel media offload: a media.Offloader backed by the edgesbc
// nftables table and conntrack.
//
// One goroutine (run) owns the netlink connections and the installed set;
// Offload, Withdraw and Counters only queue work for it, so none of them
// waits on the kernel while holding anything of the caller's.
type Media struct {
	cfg  MediaConfig
	log  hclog.Logger
	conn *nftables.Conn
	ct   *netlink.Handle
	obj  *mediaObjects

	mu      sync.Mutex
	pending []op
	closed  bool
	wake    chan struct{}
	stopped chan struct{}

	// Owned by run.
	installed map[media.Flow]bool // A-to-B flows in the kernel (the key of each pair)
}

type opKind int

const (
	opOffload opKind = iota
	opWithdraw
	opCounters
)

type op struct {
	kind     opKind
	flow     media.Flow
	done     func(error)
	final    func(fwd, rev media.Counter)
	counters chan<- countersResult
}

type countersResult struct {
	m   map[media.Flow]media.Counter
	err error
}

// Forwarding reports ErrForwardingOff when the kernel of the calling
// thread's network namespace does not forward IPv4.
func Forwarding() error {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return fmt.Errorf("read ip_forward: %w", err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		return ErrForwardingOff
	}
	return nil
}

// NewMedia creates the edgesbc table if needed, replaces the media objects
// left by an earlier run (their flows and conntrack entries are removed),
// and starts the owner goroutine. It fails without CAP_NET_ADMIN or
// nftables.
func NewMedia(cfg MediaConfig, log hclog.Logger) (*Media, error) {
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.PortMin < 1 || cfg.PortMax > 65535 || cfg.PortMin > cfg.PortMax {
		return nil, fmt.Errorf("media offload: port range [%d, %d] is invalid", cfg.PortMin, cfg.PortMax)
	}
	if len(localElements(cfg.Addrs)) == 0 {
		return nil, fmt.Errorf("media offload: no IPv4 media address: %w", ErrNotIPv4)
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bufferOption)}
	if cfg.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNS))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("media offload: open nftables: %w", err)
	}
	var ct *netlink.Handle
	if cfg.NetNS != 0 {
		ct, err = netlink.NewHandleAt(netns.NsHandle(cfg.NetNS), unix.NETLINK_NETFILTER)
	} else {
		ct, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	if err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("media offload: open conntrack: %w", err)
	}
	m := &Media{
		cfg:       cfg,
		log:       log.Named("offload"),
		conn:      conn,
		ct:        ct,
		wake:      make(chan struct{}, 1),
		stopped:   make(chan struct{}),
		installed: make(map[media.Flow]bool),
	}
	if err := m.setup(); err != nil {
		conn.CloseLasting()
		ct.Close()
		return nil, err
	}
	go m.run()
	m.log.Info("kernel media offload ready", "table", "inet "+TableName,
		"port_min", cfg.PortMin, "port_max", cfg.PortMax)
	return m, nil
}

// bufferOption raises the netlink socket buffers beyond the sysctl limits
// (root may force them), falling back to the limits.
func bufferOption(c *mnl.Conn) error {
	rc, err := c.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, netlinkBuffer)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, netlinkBuffer)
			}
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		_ = c.SetWriteBuffer(netlinkBuffer)
		_ = c.SetReadBuffer(netlinkBuffer)
	}
	return nil
}

// setup builds the media objects in two transactions: the first removes
// what an earlier run left (chains before the sets they use), the second
// creates everything afresh.
func (m *Media) setup() error {
	table := m.conn.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	if err := m.conn.Flush(); err != nil {
		return fmt.Errorf("media offload: create table inet %s: %w", TableName, err)
	}
	m.obj = newMediaObjects(table)
	stale, err := m.removeStale()
	if err != nil {
		return err
	}

	o := m.obj
	for _, s := range []*nftables.Set{o.local, o.dnat, o.snat, o.count} {
		var vals []nftables.SetElement
		if s == o.local {
			vals = localElements(m.cfg.Addrs)
		}
		if err := m.conn.AddSet(s, vals); err != nil {
			return fmt.Errorf("media offload: add set %s: %w", s.Name, err)
		}
	}
	lo, hi := m.cfg.PortMin, m.cfg.PortMax
	m.conn.AddChain(o.notrackIn)
	m.conn.AddRule(&nftables.Rule{Table: table, Chain: o.notrackIn, Exprs: o.notrackInRule(lo, hi)})
	m.conn.AddChain(o.notrackOut)
	m.conn.AddRule(&nftables.Rule{Table: table, Chain: o.notrackOut, Exprs: o.notrackOutRule(lo, hi)})
	m.conn.AddChain(o.dnatChain)
	m.conn.AddRule(&nftables.Rule{Table: table, Chain: o.dnatChain, Exprs: natRule(o.dnat, expr.NATTypeDestNAT)})
	m.conn.AddChain(o.countC)
	m.conn.AddRule(&nftables.Rule{Table: table, Chain: o.countC, Exprs: o.countRule()})
	m.conn.AddChain(o.snatChain)
	m.conn.AddRule(&nftables.Rule{Table: table, Chain: o.snatChain, Exprs: natRule(o.snat, expr.NATTypeSourceNAT)})
	if err := m.conn.Flush(); err != nil {
		return fmt.Errorf("media offload: create chains and sets in inet %s: %w", TableName, err)
	}
	n, err := m.deleteConntrack(m.matchRange())
	if err != nil {
		m.log.Warn("remove stale media conntrack entries", "error", err)
	}
	if stale > 0 || n > 0 {
		m.log.Info("removed media offload state of an earlier run", "objects", stale, "conntrack", n)
	}
	return nil
}

// removeStale deletes the media_ chains and sets of table edgesbc, chains
// first since their rules reference the sets.
func (m *Media) removeStale() (int, error) {
	chains, err := m.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return 0, fmt.Errorf("media offload: list chains: %w", err)
	}
	n := 0
	for _, c := range chains {
		if c.Table.Name == TableName && strings.HasPrefix(c.Name, mediaPrefix) {
			m.conn.DelChain(c)
			n++
		}
	}
	sets, err := m.conn.GetSets(m.obj.table)
	if err != nil {
		return 0, fmt.Errorf("media offload: list sets: %w", err)
	}
	for _, s := range sets {
		if strings.HasPrefix(s.Name, mediaPrefix) {
			m.conn.DelSet(s)
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	if err := m.conn.Flush(); err != nil {
		return 0, fmt.Errorf("media offload: remove stale objects: %w", err)
	}
	return n, nil
}

// Offload queues f (both directions). See media.Offloader.
func (m *Media) Offload(f media.Flow, done func(error)) {
	if !f.Is4() {
		go done(fmt.Errorf("offload %v: %w", f, ErrNotIPv4))
		return
	}
	if !m.enqueue(op{kind: opOffload, flow: f, done: done}) {
		go done(ErrClosed)
	}
}

// Withdraw queues the removal of f (both directions). See media.Offloader.
func (m *Media) Withdraw(f media.Flow, done func(fwd, rev media.Counter)) {
	if !m.enqueue(op{kind: opWithdraw, flow: f, final: done}) && done != nil {
		go done(media.Counter{}, media.Counter{})
	}
}

// Counters returns the kernel counters of every offloaded flow.
func (m *Media) Counters() (map[media.Flow]media.Counter, error) {
	ch := make(chan countersResult, 1)
	if !m.enqueue(op{kind: opCounters, counters: ch}) {
		return nil, ErrClosed
	}
	r := <-ch
	return r.m, r.err
}

func (m *Media) enqueue(o op) bool {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return false
	}
	m.pending = append(m.pending, o)
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return true
}

// Close stops the owner goroutine. Unless keep is set, it removes every
// media object (and so every offloaded flow) and the flows' conntrack
// entries, so nothing forwards for a daemon that is gone.
func (m *Media) Close(keep bool) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
	<-m.stopped
	defer m.ct.Close()
	defer m.conn.CloseLasting()
	if keep {
		return nil
	}
	o := m.obj
	for _, c := range []*nftables.Chain{o.notrackIn, o.notrackOut, o.dnatChain, o.countC, o.snatChain} {
		m.conn.DelChain(c)
	}
	for _, s := range []*nftables.Set{o.local, o.dnat, o.snat, o.count} {
		m.conn.DelSet(s)
	}
	if err := m.conn.Flush(); err != nil {
		return fmt.Errorf("media offload: remove objects: %w", err)
	}
	if _, err := m.deleteConntrack(m.matchRange()); err != nil {
		return fmt.Errorf("media offload: remove conntrack entries: %w", err)
	}
	m.log.Info("kernel media offload stopped", "flows", len(m.installed))
	return nil
}

// run is the owner goroutine: it applies queued work in order, in batches.
func (m *Media) run() {
	defer close(m.stopped)
	for range m.wake {
		m.mu.Lock()
		work, closed := m.pending, m.closed
		m.pending = nil
		m.mu.Unlock()
		for len(work) > 0 {
			n := m.batchLen(work)
			m.apply(work[:n])
			work = work[n:]
		}
		if closed {
			return
		}
	}
}

// batchLen is how many ops from the head of work go into one transaction:
// at most cfg.Batch flows, and a Counters request ends a batch so it sees
// everything queued before it.
func (m *Media) batchLen(work []op) int {
	for i, o := range work {
		if o.kind == opCounters {
			return max(i, 1)
		}
		if i == m.cfg.Batch {
			return i
		}
	}
	return len(work)
}

// apply runs one batch: element changes in one transaction (retried op by
// op if it fails, so one bad flow cannot block the others), then the
// conntrack entries of withdrawn flows, then the callbacks.
func (m *Media) apply(batch []op) {
	if batch[0].kind == opCounters {
		c, err := m.readCounters()
		batch[0].counters <- countersResult{m: c, err: err}
		return
	}
	var final map[media.Flow]media.Counter
	for _, o := range batch {
		if o.kind == opWithdraw && m.installed[o.flow] && o.final != nil {
			var err error
			if final, err = m.readCounters(); err != nil {
				m.log.Warn("read final media counters", "error", err)
			}
			break
		}
	}

	results := make([]error, len(batch))
	// The net effect of the batch on each flow it touches: an Offload and
	// a Withdraw of the same flow cancel out.
	inKernel := make(map[media.Flow]bool)
	var touched []media.Flow
	for _, o := range batch {
		if _, seen := inKernel[o.flow]; !seen {
			touched = append(touched, o.flow)
		}
		inKernel[o.flow] = o.kind == opOffload
	}
	var adds, dels []media.Flow
	for _, f := range touched {
		switch want := inKernel[f]; {
		case want && !m.installed[f]:
			adds = append(adds, f)
		case !want && m.installed[f]:
			dels = append(dels, f)
		}
	}
	// Deletions go first: a withdrawn flow and its replacement (a side
	// that moved) may share a key.
	m.queueElements(dels, false)
	m.queueElements(adds, true)
	if err := m.conn.Flush(); err != nil {
		m.log.Debug("media offload batch failed, retrying flow by flow", "flows", len(adds)+len(dels), "error", err)
		failed := make(map[media.Flow]error)
		for _, f := range dels {
			m.queueElements([]media.Flow{f}, false)
			if err := m.conn.Flush(); err != nil {
				m.log.Warn("withdraw media flow", "flow", f, "error", err)
			}
			inKernel[f] = false // gone or unusable either way
		}
		for _, f := range adds {
			m.queueElements([]media.Flow{f}, true)
			if err := m.conn.Flush(); err != nil {
				failed[f] = fmt.Errorf("offload flow %v: %w", f, err)
				inKernel[f] = false
			}
		}
		for i, o := range batch {
			if o.kind == opOffload {
				results[i] = failed[o.flow]
			}
		}
	}
	for i, o := range batch {
		if o.kind == opOffload && results[i] == nil && !inKernel[o.flow] {
			results[i] = fmt.Errorf("offload flow %v: withdrawn in the same batch", o.flow)
		}
	}

	var gone []media.Flow
	for f, in := range inKernel {
		if in {
			m.installed[f] = true
		} else if m.installed[f] {
			delete(m.installed, f)
			gone = append(gone, f)
		}
	}
	if len(gone) > 0 {
		if _, err := m.deleteConntrack(m.matchFlows(gone)); err != nil {
			m.log.Warn("remove conntrack entries of withdrawn flows", "flows", len(gone), "error", err)
		}
	}
	for i, o := range batch {
		switch o.kind {
		case opOffload:
			o.done(results[i])
		case opWithdraw:
			if o.final != nil {
				o.final(final[o.flow], final[o.flow.Reverse()])
			}
		}
	}
}

// elementsPerMessage keeps each element list under the 64 KiB a netlink
// attribute can hold (about 60 bytes per element here).
const elementsPerMessage = 512

// queueElements adds to the pending transaction the elements of flows, to
// add or to delete: a few large messages per set rather than one per flow,
// since every message costs an acknowledgement.
func (m *Media) queueElements(flows []media.Flow, add bool) {
	if len(flows) == 0 {
		return
	}
	var dnat, snat, count []nftables.SetElement
	for _, f := range flows {
		d, s, c := flowElements(f)
		dnat, snat, count = append(dnat, d...), append(snat, s...), append(count, c...)
	}
	do := m.conn.SetAddElements
	if !add {
		do = m.conn.SetDeleteElements
	}
	for _, x := range []struct {
		s *nftables.Set
		e []nftables.SetElement
	}{{m.obj.dnat, dnat}, {m.obj.snat, snat}, {m.obj.count, count}} {
		for len(x.e) > 0 {
			k := min(len(x.e), elementsPerMessage)
			if err := do(x.s, x.e[:k]); err != nil {
				m.log.Error("encode media offload elements", "set", x.s.Name, "flows", len(flows), "error", err)
			}
			x.e = x.e[k:]
		}
	}
}

// readCounters dumps media_count4 and maps its elements back to flows.
func (m *Media) readCounters() (map[media.Flow]media.Counter, error) {
	elems, err := m.conn.GetSetElements(m.obj.count)
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", setCount4, err)
	}
	byKey := make(map[[2]netip.AddrPort]media.Counter, len(elems))
	for _, e := range elems {
		src, dst, ok := parseTupleKey(e.Key)
		if !ok || e.Counter == nil {
			continue
		}
		byKey[[2]netip.AddrPort{src, dst}] = media.Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
	}
	out := make(map[media.Flow]media.Counter, 2*len(m.installed))
	for f := range m.installed {
		for _, d := range []media.Flow{f, f.Reverse()} {
			if c, ok := byKey[[2]netip.AddrPort{d.Src, d.Dst}]; ok {
				out[d] = c
			}
		}
	}
	return out, nil
}

// ctFilter selects conntrack entries by their original tuple.
type ctFilter func(orig netlink.IPTuple) bool

func (f ctFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	return flow.Forward.Protocol == unix.IPPROTO_UDP && f(flow.Forward)
}

// matchFlows selects the entries of the given flows, whichever direction
// started them.
func (m *Media) matchFlows(flows []media.Flow) ctFilter {
	type tuple struct{ src, dst netip.AddrPort }
	want := make(map[tuple]bool, 2*len(flows))
	for _, f := range flows {
		want[tuple{f.Src, f.Local}] = true
		want[tuple{f.Dst, f.Out}] = true
	}
	return func(t netlink.IPTuple) bool {
		return want[tuple{addrPort(t.SrcIP, t.SrcPort), addrPort(t.DstIP, t.DstPort)}]
	}
}

// matchRange selects every entry toward a relay port: what an offloaded
// flow leaves behind.
func (m *Media) matchRange() ctFilter {
	local := make(map[netip.Addr]bool)
	for _, a := range m.cfg.Addrs {
		local[a.Unmap()] = true
	}
	return func(t netlink.IPTuple) bool {
		d := addrPort(t.DstIP, t.DstPort)
		return local[d.Addr()] && int(d.Port()) >= m.cfg.PortMin && int(d.Port()) <= m.cfg.PortMax
	}
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

// deleteConntrack removes the IPv4 conntrack entries f selects.
func (m *Media) deleteConntrack(f ctFilter) (uint, error) {
	n, err := m.ct.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return n, fmt.Errorf("delete conntrack entries: %w", err)
	}
	return n, nil
}

// Ensure Media satisfies the seam it exists for.
var _ media.Offloader = (*Media)(nil)
