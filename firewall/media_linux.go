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
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
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

// DefaultCheckEvery is MediaConfig.CheckEvery's default.
const DefaultCheckEvery = 10 * time.Second

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
	// ec carries the element changes of flows and pinholes and the
	// counter dumps: the hot paths (see elemConn).
	ec  *elemConn
	obj *mediaObjects
	// tx encodes, without sending, the transactions that build the media
	// objects; flushTx sends what it recorded (txMsgs) over ec, followed
	// by the rules queued in txRules, which the library cannot encode.
	tx      *nftables.Conn
	txMsgs  [][]byte
	txRules []txRule

	mu      sync.Mutex
	pending []op
	closed  bool
	wake    chan struct{}
	stopped chan struct{}

	// Owned by run.
	installed map[media.Flow]bool // A-to-B flows in the kernel (the key of each pair)
	// counted maps the key of each media_dnatX element of an installed
	// flow to its direction, so a counter dump finds its flows without
	// parsing or allocating.
	counted map[countKey]media.Flow
	// pins are the pinholes in the kernel; closedAddrs is the set of
	// MediaConfig.Closed, fixed at start (read by any goroutine).
	pins        map[pinhole]bool
	closedAddrs map[netip.Addr]bool
	// stale holds, with MediaConfig.Keep, the elements an earlier run left
	// that no Adopt has claimed yet: set name -> key -> value. Owned by
	// run after setup.
	stale map[string]map[string]string
}

// txRule is a rule encoded for elemConn.rule.
type txRule struct {
	chain string
	exprs [][]byte
}

type opKind int

const (
	opOffload opKind = iota
	opWithdraw
	opCounters
	opAdopt
	opPrune
	opPinOpen
	opPinClose
)

// pinhole is one element of media_pinX: the relay socket and the remote IP
// it expects.
type pinhole struct {
	local  netip.AddrPort
	remote netip.Addr
}

type op struct {
	kind   opKind
	flow   media.Flow
	pin    pinhole
	pinned func()
	done   func(error)
	final  func(fwd, rev media.Counter)
	into   map[media.Flow]media.Counter // of opCounters
	reply  chan<- error
}

// Forwarding reports ErrForwardingOff when the kernel of the calling
// thread's network namespace does not forward IPv4 (v6 false) or IPv6
// (v6 true).
func Forwarding(v6 bool) error {
	path := "/proc/sys/net/ipv4/ip_forward"
	if v6 {
		path = "/proc/sys/net/ipv6/conf/all/forwarding"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		if v6 {
			return ErrForwarding6Off
		}
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
	if cfg.CheckEvery <= 0 {
		cfg.CheckEvery = DefaultCheckEvery
	}
	if cfg.PortMin < 1 || cfg.PortMax > 65535 || cfg.PortMin > cfg.PortMax {
		return nil, fmt.Errorf("media offload: port range [%d, %d] is invalid", cfg.PortMin, cfg.PortMax)
	}
	if len(cfg.Addrs) == 0 {
		return nil, fmt.Errorf("media offload: no media address")
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
	ec, err := newElemConn(cfg.NetNS, TableName)
	if err != nil {
		conn.CloseLasting()
		ct.Close()
		return nil, fmt.Errorf("media offload: %w", err)
	}
	m := &Media{
		cfg:         cfg,
		log:         log.Named("offload"),
		conn:        conn,
		ct:          ct,
		ec:          ec,
		wake:        make(chan struct{}, 1),
		stopped:     make(chan struct{}),
		installed:   make(map[media.Flow]bool),
		counted:     make(map[countKey]media.Flow),
		pins:        make(map[pinhole]bool),
		closedAddrs: make(map[netip.Addr]bool),
	}
	m.tx, err = nftables.New(nftables.WithTestDial(m.record))
	if err != nil {
		conn.CloseLasting()
		ct.Close()
		ec.Close()
		return nil, fmt.Errorf("media offload: %w", err)
	}
	for _, a := range cfg.Closed {
		if a.IsValid() {
			m.closedAddrs[a.Unmap()] = true
		}
	}
	if err := m.setup(); err != nil {
		conn.CloseLasting()
		ct.Close()
		ec.Close()
		return nil, err
	}
	go m.run()
	m.log.Info("kernel media offload ready", "table", "inet "+TableName,
		"port_min", cfg.PortMin, "port_max", cfg.PortMax, "closed", len(m.closedAddrs))
	return m, nil
}

// record is m.tx's netlink: it keeps the messages of a transaction for
// flushTx, without the batch's begin and end, and acknowledges them.
func (m *Media) record(req []mnl.Message) ([]mnl.Message, error) {
	for _, r := range req {
		if t := r.Header.Type; t == unix.NFNL_MSG_BATCH_BEGIN || t == unix.NFNL_MSG_BATCH_END {
			continue
		}
		b, err := r.MarshalBinary()
		if err != nil {
			return nil, err
		}
		m.txMsgs = append(m.txMsgs, b)
	}
	return req, nil
}

// flushTx sends what m.tx recorded and the queued rules as one
// transaction.
func (m *Media) flushTx() error {
	m.txMsgs = m.txMsgs[:0]
	rules := m.txRules
	m.txRules = nil
	if err := m.tx.Flush(); err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	m.ec.begin()
	for _, b := range m.txMsgs {
		m.ec.raw(b)
	}
	for _, r := range rules {
		m.ec.rule(r.chain, r.exprs)
	}
	return m.ec.commit()
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
	if m.cfg.Keep {
		err := m.keepFlows()
		if err == nil {
			return nil
		}
		m.log.Warn("cannot keep the media flows of an earlier run: starting afresh", "error", err)
	}
	stale, err := m.removeStale()
	if err != nil {
		return err
	}

	if err := m.create(nil); err != nil {
		return err
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

// create makes the sets, with the elements of flows, and the chains in one
// transaction; the table must exist.
func (m *Media) create(flows []media.Flow) error {
	o := m.obj
	for _, fo := range o.families() {
		for _, s := range []*nftables.Set{fo.local, fo.dnat, fo.snat} {
			var vals []nftables.SetElement
			if s == fo.local {
				vals = localElements(m.cfg.Addrs, fo.fam == inet4)
			}
			if err := m.tx.AddSet(s, vals); err != nil {
				return fmt.Errorf("media offload: add set %s: %w", s.Name, err)
			}
		}
	}
	if err := m.addPinSets(); err != nil {
		return err
	}
	m.queueElements(flows, true)
	m.queuePins(m.installedPins(), true)
	if err := m.addChains(); err != nil {
		return err
	}
	if err := m.flushTx(); err != nil {
		return fmt.Errorf("media offload: create chains and sets in inet %s: %w", TableName, err)
	}
	return nil
}

// tableExists reports whether table inet edgesbc is there.
func (m *Media) tableExists() bool {
	_, err := m.conn.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	return err == nil
}

// present reports whether the media objects are in the table: the table
// alone says little, as the guard recreates it after a flush too.
func (m *Media) present() bool {
	if _, err := m.conn.ListChain(m.obj.table, chainPin); err != nil {
		return false
	}
	for _, s := range []*nftables.Set{m.obj.v4.dnat, m.obj.v4.pin} {
		if _, err := m.conn.GetSetByName(m.obj.table, s.Name); err != nil {
			return false
		}
	}
	return true
}

// ensure rebuilds the media objects when they were removed from outside;
// the owner goroutine calls it when idle for MediaConfig.CheckEvery.
func (m *Media) ensure() {
	if m.present() {
		return
	}
	if err := m.rebuild(); err != nil {
		m.log.Error("media objects were removed from the table and cannot be rebuilt", "error", err)
	}
}

// rebuild recreates the table and everything in it, with every installed
// flow, after someone removed it (a host firewall reload that flushes the
// whole ruleset, say). Offloaded calls lose nothing: their conntrack
// entries carry the NAT meanwhile, but without the counters the calls
// would look silent and time out.
func (m *Media) rebuild() error {
	m.conn.AddTable(m.obj.table)
	if err := m.conn.Flush(); err != nil {
		return fmt.Errorf("media offload: recreate table inet %s: %w", TableName, err)
	}
	// Whatever is left of ours (only part may have gone) goes first, so
	// create starts from nothing.
	if _, err := m.removeStale(); err != nil {
		return err
	}
	flows := make([]media.Flow, 0, len(m.installed))
	for f := range m.installed {
		flows = append(flows, f)
	}
	if err := m.create(flows); err != nil {
		return err
	}
	m.log.Warn("media objects were removed from outside: rebuilt them", "table", "inet "+TableName, "flows", len(flows), "pinholes", len(m.pins))
	return nil
}

// addPinSets queues the pinhole sets, the closed addresses replacing what
// the set held. The pinholes themselves are added by the caller.
func (m *Media) addPinSets() error {
	for _, fo := range m.obj.families() {
		var closed []nftables.SetElement
		for a := range m.closedAddrs {
			if a.Is4() == (fo.fam == inet4) {
				closed = append(closed, nftables.SetElement{Key: addrBytes(a)})
			}
		}
		for _, s := range []*nftables.Set{fo.closed, fo.pin} {
			if err := m.tx.AddSet(s, nil); err != nil {
				return fmt.Errorf("media offload: add set %s: %w", s.Name, err)
			}
			m.tx.FlushSet(s)
		}
		if len(closed) > 0 {
			if err := m.tx.SetAddElements(fo.closed, closed); err != nil {
				return fmt.Errorf("media offload: add set %s elements: %w", fo.closed.Name, err)
			}
		}
	}
	return nil
}

func (m *Media) installedPins() []pinhole {
	out := make([]pinhole, 0, len(m.pins))
	for p := range m.pins {
		out = append(out, p)
	}
	return out
}

// queuePins adds to the pending transaction the elements of pins, to add
// or to delete.
func (m *Media) queuePins(pins []pinhole, add bool) {
	do := m.tx.SetAddElements
	if !add {
		do = m.tx.SetDeleteElements
	}
	for _, fo := range m.obj.families() {
		var elems []nftables.SetElement
		for _, p := range pins {
			if m.obj.ofAddr(p.local.Addr()) == fo {
				elems = append(elems, nftables.SetElement{Key: pinKey(p.local, p.remote)})
			}
		}
		for len(elems) > 0 {
			k := min(len(elems), elementsPerMessage)
			if err := do(fo.pin, elems[:k]); err != nil {
				m.log.Error("encode media pinhole elements", "set", fo.pin.Name, "pinholes", len(pins), "error", err)
			}
			elems = elems[k:]
		}
	}
}

// addChains queues the chains and their rules.
func (m *Media) addChains() error {
	o, table := m.obj, m.obj.table
	lo, hi := m.cfg.PortMin, m.cfg.PortMax
	for _, c := range o.chains() {
		m.tx.AddChain(c)
	}
	for _, fo := range o.families() {
		// nft does not print a map lookup whose result no expression
		// uses: the comments say what those rules match.
		m.tx.AddRule(&nftables.Rule{Table: table, Chain: o.notrackIn, Exprs: fo.offloadedReturn(),
			UserData: userdata.AppendString(nil, userdata.TypeComment,
				"offloaded flows: saddr . sport . daddr . dport in @"+fo.snat.Name)})
		m.tx.AddRule(&nftables.Rule{Table: table, Chain: o.notrackIn, Exprs: fo.notrackInRule(lo, hi)})
		m.tx.AddRule(&nftables.Rule{Table: table, Chain: o.notrackOut, Exprs: fo.notrackOutRule(lo, hi)})
		m.tx.AddRule(&nftables.Rule{Table: table, Chain: o.countC, Exprs: fo.countRule(),
			UserData: userdata.AppendString(nil, userdata.TypeComment,
				"counted: saddr . sport . daddr . dport in @"+fo.dnat.Name)})
		m.tx.AddRule(&nftables.Rule{Table: table, Chain: o.dnatChain, Exprs: fo.dnatRule()})
		snat, err := fo.snatRule()
		if err != nil {
			return fmt.Errorf("media offload: %w", err)
		}
		m.txRules = append(m.txRules, txRule{chain: o.snatChain.Name, exprs: snat})
		m.tx.AddRule(&nftables.Rule{Table: table, Chain: o.pinChain, Exprs: fo.pinRule(lo, hi)})
	}
	return nil
}

// keepFlows is setup for a restart that keeps the flows an earlier run left:
// the chains are rebuilt (the port range or addresses may have changed),
// the maps and their elements stay, and the elements are noted as stale
// until Adopt claims them or Prune removes them.
func (m *Media) keepFlows() error {
	o := m.obj
	sets, err := m.conn.GetSets(o.table)
	if err != nil {
		return fmt.Errorf("list sets: %w", err)
	}
	have := map[string]bool{}
	for _, s := range sets {
		have[s.Name] = true
	}
	for _, s := range o.sets() {
		if !have[s.Name] {
			return fmt.Errorf("set %s is missing", s.Name)
		}
	}
	// Earlier versions counted in sets of their own, and their maps are
	// keyed otherwise: their flows cannot be adopted.
	for _, old := range []string{"media_count4", "media_count6"} {
		if have[old] {
			return fmt.Errorf("the table holds set %s: media objects of an earlier version", old)
		}
	}
	chains, err := m.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name == TableName && strings.HasPrefix(c.Name, mediaPrefix) {
			m.tx.DelChain(c)
		}
	}
	// One transaction: the old chains go and the new ones come at once.
	for _, s := range o.sets() {
		if err := m.tx.AddSet(s, nil); err != nil {
			return fmt.Errorf("add set %s: %w", s.Name, err)
		}
	}
	for _, fo := range o.families() {
		m.tx.FlushSet(fo.local)
		if err := m.tx.SetAddElements(fo.local, localElements(m.cfg.Addrs, fo.fam == inet4)); err != nil {
			return fmt.Errorf("add set %s elements: %w", fo.local.Name, err)
		}
	}
	// Pinholes start empty: the relay opens them again as it restores
	// each call (media.Relay.Restore), before its sockets read.
	if err := m.addPinSets(); err != nil {
		return err
	}
	if err := m.addChains(); err != nil {
		return err
	}
	if err := m.flushTx(); err != nil {
		return fmt.Errorf("rebuild chains in inet %s: %w", TableName, err)
	}
	m.stale = make(map[string]map[string]string)
	n := 0
	for _, s := range o.sets() {
		elems, err := m.conn.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("read set %s: %w", s.Name, err)
		}
		if s == o.v4.local || s == o.v6.local {
			continue
		}
		m.stale[s.Name] = make(map[string]string, len(elems))
		for _, e := range elems {
			m.stale[s.Name][string(e.Key)] = string(e.Val)
		}
		if s == o.v4.dnat || s == o.v6.dnat {
			n += len(elems)
		}
	}
	m.log.Info("kept the media flows of an earlier run", "elements", n)
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
	if !oneFamily(f) {
		go done(fmt.Errorf("offload %v: %w", f, ErrMixedFamily))
		return
	}
	if len(localElements(m.cfg.Addrs, f.Src.Addr().Is4())) == 0 {
		go done(fmt.Errorf("offload %v: %w", f, ErrFamilyOff))
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

// OpenPinhole queues a pinhole: datagrams from remote to local pass the
// media_pin chain. Nothing is kept for a local address that is not closed
// (MediaConfig.Closed). See media.Pinholer.
func (m *Media) OpenPinhole(local netip.AddrPort, remote netip.Addr, done func()) {
	if !m.pinOp(op{kind: opPinOpen, pinned: done}, local, remote) && done != nil {
		done()
	}
}

// ClosePinhole queues the removal of a pinhole. See media.Pinholer.
func (m *Media) ClosePinhole(local netip.AddrPort, remote netip.Addr) {
	m.pinOp(op{kind: opPinClose}, local, remote)
}

// pinOp queues o for the pinhole (local, remote) and reports whether it
// did: not for an address that is not closed, nor after Close.
func (m *Media) pinOp(o op, local netip.AddrPort, remote netip.Addr) bool {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = remote.Unmap()
	if !m.closedAddrs[local.Addr()] || !remote.IsValid() || remote.Is4() != local.Addr().Is4() {
		return false
	}
	o.pin = pinhole{local: local, remote: remote}
	return m.enqueue(o)
}

// Counters fills into with the kernel counters of every offloaded flow.
// See media.Offloader.
func (m *Media) Counters(into map[media.Flow]media.Counter) error {
	ch := make(chan error, 1)
	if !m.enqueue(op{kind: opCounters, into: into, reply: ch}) {
		return ErrClosed
	}
	return <-ch
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

// Adopt claims f, and its reverse, as offloaded when an earlier run left
// all their elements in the kernel (MediaConfig.Keep); see media.Adopter.
func (m *Media) Adopt(f media.Flow) bool {
	ch := make(chan error, 1)
	if !oneFamily(f) || !m.enqueue(op{kind: opAdopt, flow: f, reply: ch}) {
		return false
	}
	return <-ch == nil
}

// Prune removes what an earlier run left and no Adopt claimed: their
// elements and conntrack entries. Call it once every kept call is
// restored.
func (m *Media) Prune() error {
	ch := make(chan error, 1)
	if !m.enqueue(op{kind: opPrune, reply: ch}) {
		return ErrClosed
	}
	return <-ch
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
	defer m.ec.Close()
	defer m.conn.CloseLasting()
	if keep {
		return nil
	}
	if !m.tableExists() {
		return nil // removed from outside: nothing of ours is left
	}
	o := m.obj
	for _, c := range o.chains() {
		m.conn.DelChain(c)
	}
	for _, s := range append(o.sets(), o.pinSets()...) {
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
	check := time.NewTicker(m.cfg.CheckEvery)
	defer check.Stop()
	for {
		select {
		case <-m.wake:
		case <-check.C:
			m.ensure()
			continue
		}
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
		if o.kind == opCounters || o.kind == opAdopt || o.kind == opPrune {
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
	switch batch[0].kind {
	case opCounters:
		into := batch[0].into
		fill := func(d media.Flow, c media.Counter) { into[d] = c }
		clear(into)
		err := m.readCounters(fill)
		if err != nil && !m.present() {
			if err = m.rebuild(); err == nil {
				clear(into)
				err = m.readCounters(fill)
			}
		}
		batch[0].reply <- err
		return
	case opAdopt:
		batch[0].reply <- m.adopt(batch[0].flow)
		return
	case opPrune:
		batch[0].reply <- m.prune()
		return
	}
	var final map[media.Flow]media.Counter
	for _, o := range batch {
		if o.kind == opWithdraw && m.installed[o.flow] && o.final != nil {
			if final == nil {
				final = make(map[media.Flow]media.Counter)
			}
			final[o.flow], final[o.flow.Reverse()] = media.Counter{}, media.Counter{}
		}
	}
	if final != nil {
		// Only the withdrawn flows' counters are kept.
		if err := m.readCounters(func(d media.Flow, c media.Counter) {
			if _, ok := final[d]; ok {
				final[d] = c
			}
		}); err != nil {
			m.log.Warn("read final media counters", "error", err)
		}
	}

	results := make([]error, len(batch))
	// The net effect of the batch on each flow it touches: an Offload and
	// a Withdraw of the same flow cancel out.
	inKernel := make(map[media.Flow]bool, len(batch))
	touched := make([]media.Flow, 0, len(batch))
	for _, o := range batch {
		if o.kind != opOffload && o.kind != opWithdraw {
			continue
		}
		if _, seen := inKernel[o.flow]; !seen {
			touched = append(touched, o.flow)
		}
		inKernel[o.flow] = o.kind == opOffload
	}
	pinAdds, pinDels := m.pinChanges(batch)
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
	commit := func() error {
		return m.commitElements(func() {
			m.txnFlows(dels, false)
			m.txnFlows(adds, true)
			m.txnPins(pinDels, false)
			m.txnPins(pinAdds, true)
		})
	}
	err := commit()
	if err != nil && !m.present() {
		// Removed from outside: rebuilt with what is installed, then the
		// batch again.
		if err = m.rebuild(); err == nil {
			err = commit()
		}
	}
	for _, p := range pinDels {
		delete(m.pins, p) // gone or unusable either way
	}
	if err != nil {
		m.log.Debug("media offload batch failed, retrying one by one", "flows", len(adds)+len(dels),
			"pinholes", len(pinAdds)+len(pinDels), "error", err)
		for _, p := range pinDels {
			if err := m.commitElements(func() { m.txnPins([]pinhole{p}, false) }); err != nil {
				m.log.Warn("close media pinhole", "local", p.local, "remote", p.remote, "error", err)
			}
		}
		for _, p := range pinAdds {
			if err := m.commitElements(func() { m.txnPins([]pinhole{p}, true) }); err != nil {
				m.log.Warn("open media pinhole: the relay port stays closed to its remote", "local", p.local, "remote", p.remote, "error", err)
				continue
			}
			m.pins[p] = true
		}
	} else {
		for _, p := range pinAdds {
			m.pins[p] = true
		}
	}
	if err != nil {
		failed := make(map[media.Flow]error)
		for _, f := range dels {
			if err := m.commitElements(func() { m.txnFlows([]media.Flow{f}, false) }); err != nil {
				m.log.Warn("withdraw media flow", "flow", f, "error", err)
			}
			inKernel[f] = false // gone or unusable either way
		}
		for _, f := range adds {
			if err := m.commitElements(func() { m.txnFlows([]media.Flow{f}, true) }); err != nil {
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
			m.install(f)
		} else if m.installed[f] {
			m.uninstall(f)
			gone = append(gone, f)
		}
	}
	if len(gone) > 0 {
		if err := m.forgetConntrack(gone); err != nil {
			m.log.Warn("remove conntrack entries of withdrawn flows", "flows", len(gone), "error", err)
		}
	}
	for i, o := range batch {
		switch o.kind {
		case opPinOpen:
			if o.pinned != nil {
				o.pinned()
			}
		case opOffload:
			o.done(results[i])
		case opWithdraw:
			if o.final != nil {
				o.final(final[o.flow], final[o.flow.Reverse()])
			}
		}
	}
}

// pinChanges is the net effect of a batch on the pinholes: the last
// change of each wins, and only what differs from the kernel is sent.
func (m *Media) pinChanges(batch []op) (adds, dels []pinhole) {
	want := make(map[pinhole]bool)
	var order []pinhole
	for _, o := range batch {
		if o.kind != opPinOpen && o.kind != opPinClose {
			continue
		}
		if _, seen := want[o.pin]; !seen {
			order = append(order, o.pin)
		}
		want[o.pin] = o.kind == opPinOpen
	}
	for _, p := range order {
		switch {
		case want[p] && !m.pins[p]:
			adds = append(adds, p)
		case !want[p] && m.pins[p]:
			dels = append(dels, p)
		}
	}
	return adds, dels
}

// elementsPerMessage keeps each element list under the 64 KiB a netlink
// attribute can hold (about 60 bytes per element here).
const elementsPerMessage = 512

// adopt moves f from stale to installed if every element of it is there
// with the right value.
func (m *Media) adopt(f media.Flow) error {
	if m.installed[f] {
		return nil
	}
	dnat, snat := flowElements(f)
	fo := m.obj.of(f)
	parts := []struct {
		set string
		e   []nftables.SetElement
	}{{fo.dnat.Name, dnat}, {fo.snat.Name, snat}}
	for _, x := range parts {
		for _, e := range x.e {
			v, ok := m.stale[x.set][string(e.Key)]
			if !ok || v != string(e.Val) {
				return fmt.Errorf("adopt %v: element missing in %s", f, x.set)
			}
		}
	}
	for _, x := range parts {
		for _, e := range x.e {
			delete(m.stale[x.set], string(e.Key))
		}
	}
	m.install(f)
	return nil
}

// countKey is a media_dnatX element key (see tupleKey) as a map key: its
// length (16 for IPv4, 40 for IPv6) and its bytes.
type countKey struct {
	n uint8
	b [40]byte
}

func countKeyOf(key []byte) countKey {
	k := countKey{n: uint8(min(len(key), 40))}
	copy(k.b[:], key)
	return k
}

func directionKey(d media.Flow) countKey {
	var k countKey
	src, dst, _ := elemOf(setDNAT, d)
	k.n = uint8(len(appendTuple(k.b[:0], src, dst)))
	return k
}

// install notes f (and its reverse) as in the kernel.
func (m *Media) install(f media.Flow) {
	m.installed[f] = true
	for _, d := range [2]media.Flow{f, f.Reverse()} {
		m.counted[directionKey(d)] = d
	}
}

// uninstall forgets f (and its reverse).
func (m *Media) uninstall(f media.Flow) {
	delete(m.installed, f)
	for _, d := range [2]media.Flow{f, f.Reverse()} {
		if k := directionKey(d); m.counted[k] == d {
			delete(m.counted, k)
		}
	}
}

// prune deletes every stale element and the conntrack entries of their
// flows.
func (m *Media) prune() error {
	if m.stale == nil {
		return nil
	}
	type tuple struct{ src, dst netip.AddrPort }
	gone := make(map[tuple]bool)
	for _, fo := range m.obj.families() {
		for k := range m.stale[fo.dnat.Name] {
			if src, dst, ok := parseTupleKey([]byte(k)); ok {
				gone[tuple{src, dst}] = true
			}
		}
	}
	n := len(gone)
	for _, s := range m.obj.sets() {
		var elems []nftables.SetElement
		for k := range m.stale[s.Name] {
			elems = append(elems, nftables.SetElement{Key: []byte(k)})
		}
		for len(elems) > 0 {
			k := min(len(elems), elementsPerMessage)
			if err := m.conn.SetDeleteElements(s, elems[:k]); err != nil {
				return fmt.Errorf("prune %s: %w", s.Name, err)
			}
			elems = elems[k:]
		}
	}
	m.stale = nil
	if err := m.conn.Flush(); err != nil {
		return fmt.Errorf("prune stale media flows: %w", err)
	}
	if n > 0 {
		if _, err := m.deleteConntrack(func(t netlink.IPTuple) bool {
			return gone[tuple{addrPort(t.SrcIP, t.SrcPort), addrPort(t.DstIP, t.DstPort)}]
		}); err != nil {
			return err
		}
		m.log.Info("removed media flows of an earlier run that no call claimed", "elements", n)
	}
	return nil
}

// queueElements adds to the pending transaction the elements of flows, to
// add or to delete: a few large messages per set rather than one per flow,
// since every message costs an acknowledgement.
func (m *Media) queueElements(flows []media.Flow, add bool) {
	if len(flows) == 0 {
		return
	}
	do := m.tx.SetAddElements
	if !add {
		do = m.tx.SetDeleteElements
	}
	for _, fo := range m.obj.families() {
		var dnat, snat []nftables.SetElement
		for _, f := range flows {
			if m.obj.of(f) != fo {
				continue
			}
			d, s := flowElements(f)
			dnat, snat = append(dnat, d...), append(snat, s...)
		}
		for _, x := range []struct {
			s *nftables.Set
			e []nftables.SetElement
		}{{fo.dnat, dnat}, {fo.snat, snat}} {
			for len(x.e) > 0 {
				k := min(len(x.e), elementsPerMessage)
				if err := do(x.s, x.e[:k]); err != nil {
					m.log.Error("encode media offload elements", "set", x.s.Name, "flows", len(flows), "error", err)
				}
				x.e = x.e[k:]
			}
		}
	}
}

// readCounters dumps the DNAT maps and calls fn with the counter of
// each direction of an installed flow. It allocates nothing per element.
func (m *Media) readCounters(fn func(d media.Flow, c media.Counter)) error {
	for _, fo := range m.obj.families() {
		err := m.ec.dumpCounters(fo.dnat.Name, func(key []byte, packets, bytes uint64) {
			if d, ok := m.counted[countKeyOf(key)]; ok {
				fn(d, media.Counter{Packets: packets, Bytes: bytes})
			}
		})
		if err != nil {
			return fmt.Errorf("read map %s: %w", fo.dnat.Name, err)
		}
	}
	return nil
}

// commitElements builds one transaction of element changes with fill and
// commits it.
func (m *Media) commitElements(fill func()) error {
	m.ec.begin()
	fill()
	return m.ec.commit()
}

// txnFlows adds the elements of flows to the open transaction, to add or
// to delete, set by set so that they share few messages.
func (m *Media) txnFlows(flows []media.Flow, add bool) {
	if len(flows) == 0 {
		return
	}
	var key [40]byte
	var val [20]byte
	for _, fo := range m.obj.families() {
		for kind, set := range []*nftables.Set{setDNAT: fo.dnat, setSNAT: fo.snat} {
			for _, f := range flows {
				if m.obj.of(f) != fo {
					continue
				}
				for _, d := range [2]media.Flow{f, f.Reverse()} {
					src, dst, nat := elemOf(setKind(kind), d)
					var v []byte // a map element is removed by its key
					if add && nat.IsValid() {
						v = appendTarget(val[:0], nat)
					}
					m.ec.elem(set.Name, !add, appendTuple(key[:0], src, dst), v)
				}
			}
		}
	}
}

// txnPins adds the elements of pins to the open transaction, to add or to
// delete.
func (m *Media) txnPins(pins []pinhole, add bool) {
	for _, fo := range m.obj.families() {
		for _, p := range pins {
			if m.obj.ofAddr(p.local.Addr()) == fo {
				m.ec.elem(fo.pin.Name, !add, pinKey(p.local, p.remote), nil)
			}
		}
	}
}

// ctFilter selects conntrack entries by their original tuple.
type ctFilter func(orig netlink.IPTuple) bool

func (f ctFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	return flow.Forward.Protocol == unix.IPPROTO_UDP && f(flow.Forward)
}

// ctLookupMax is the most withdrawn flows whose conntrack entries are
// deleted one by one, each found by its hash. Beyond it one dump of the
// table with a filter is cheaper: a dump walks every bucket of the
// conntrack hash (tens of milliseconds here even when nearly empty),
// while each targeted delete costs a few microseconds.
const ctLookupMax = 1024

// forgetConntrack removes the conntrack entries of withdrawn flows.
func (m *Media) forgetConntrack(flows []media.Flow) error {
	if len(flows) > ctLookupMax {
		_, err := m.deleteConntrack(m.matchFlows(flows))
		return err
	}
	_, err := m.ec.deleteConntrack(flowTuples(flows))
	return err
}

// matchFlows selects the entries of the given flows, whichever direction
// started them.
func (m *Media) matchFlows(flows []media.Flow) ctFilter {
	want := make(map[ctTuple]bool, 2*len(flows))
	for _, t := range flowTuples(flows) {
		want[t] = true
	}
	return func(t netlink.IPTuple) bool {
		return want[ctTuple{addrPort(t.SrcIP, t.SrcPort), addrPort(t.DstIP, t.DstPort)}]
	}
}

// flowTuples are the tuples of the conntrack entries of flows, whichever
// direction started them.
func flowTuples(flows []media.Flow) []ctTuple {
	out := make([]ctTuple, 0, 2*len(flows))
	for _, f := range flows {
		out = append(out, ctTuple{f.Src, f.Local}, ctTuple{f.Dst, f.Out})
	}
	return out
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

// deleteConntrack removes the conntrack entries f selects.
func (m *Media) deleteConntrack(f ctFilter) (uint, error) {
	var total uint
	for _, af := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		n, err := m.ct.ConntrackDeleteFilters(netlink.ConntrackTable, af, f)
		total += n
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return total, fmt.Errorf("delete conntrack entries: %w", err)
		}
	}
	return total, nil
}

// Ensure Media satisfies the seams it exists for.
var (
	_ media.Offloader = (*Media)(nil)
	_ media.Pinholer  = (*Media)(nil)
)

// oneFamily reports whether every address of f is of the same family: the
// kernel translates within one family only.
func oneFamily(f media.Flow) bool {
	v4 := f.Src.Addr().Is4()
	for _, ap := range []netip.AddrPort{f.Local, f.Out, f.Dst} {
		if ap.Addr().Is4() != v4 || !ap.Addr().IsValid() {
			return false
		}
	}
	return f.Src.Addr().IsValid()
}
