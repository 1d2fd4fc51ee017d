//go:build linux

package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"

	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// elemConn changes set elements and dumps counters over a netlink socket of
// its own, encoding and decoding the messages directly into reused buffers.
// It exists for speed: through the general nftables client, encoding 60,000
// elements (10,000 flows) allocated several objects per element and took
// longer than the kernel needed to commit them, and a counter dump built a
// slice of attributes per element.
//
// It also sends the transactions that build the media objects: messages
// the client library encoded (raw) and rules it cannot encode (rule).
//
// One transaction is built with begin, elem and commit; elements of the same
// set and operation share messages, each message as full as a netlink
// attribute allows. Only the owner goroutine of Media uses an elemConn.
type elemConn struct {
	c     *mnl.Conn
	rc    syscall.RawConn
	table string
	seq   uint32
	out   []byte // the transaction being built
	in    []byte // receive buffer

	// The open element message, if any.
	msg, list int    // offsets of its header and of its element list
	set       string // its set
	typ       uint16 // its message type
	acks      int    // messages of the transaction that ask for an ack
	err       error  // first encoding error
}

// elemIOTimeout bounds every wait for the kernel's answers: a commit or a
// dump never blocks the owner goroutine for ever.
const elemIOTimeout = 10 * time.Second

// maxElemList keeps an element list below the 64 KiB a netlink attribute
// can hold, headers included.
const maxElemList = 0xffff - 256

const nfgenmsgLen = 4

func newElemConn(netNS int, table string) (*elemConn, error) {
	c, err := mnl.Dial(unix.NETLINK_NETFILTER, &mnl.Config{NetNS: netNS})
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	_ = bufferOption(c)
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("netlink raw conn: %w", err)
	}
	// Errors need not echo the request: a conntrack delete of an entry
	// that is not there answers ENOENT, and thousands of those would
	// otherwise fill the receive buffer with copies of our own messages.
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	})
	return &elemConn{c: c, rc: rc, table: table, in: make([]byte, 1<<16)}, nil
}

func (e *elemConn) Close() error { return e.c.Close() }

// begin starts a transaction.
func (e *elemConn) begin() {
	e.out = e.out[:0]
	e.msg, e.set, e.acks, e.err = -1, "", 0, nil
	e.finish(e.header(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES))
}

// elem adds the change of one element: an insertion (with val for a map)
// or, with del, a removal.
func (e *elemConn) elem(set string, del bool, key, val []byte) {
	typ := uint16(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	if del {
		typ = unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELSETELEM
	}
	size := 4 + attrLen(4+attrLen(len(key)))
	if val != nil {
		size += attrLen(4 + attrLen(len(val)))
	}
	if e.msg >= 0 && (e.set != set || e.typ != typ || len(e.out)-e.list+size > maxElemList) {
		e.closeMsg()
	}
	if e.msg < 0 {
		flags := uint16(unix.NLM_F_REQUEST | unix.NLM_F_ACK)
		if !del {
			flags |= unix.NLM_F_CREATE
		}
		e.msg = e.header(typ, flags, unix.NFPROTO_INET, 0)
		e.out = appendAttr(e.out, unix.NFTA_SET_ELEM_LIST_TABLE, cstring(e.table))
		e.out = appendAttr(e.out, unix.NFTA_SET_ELEM_LIST_SET, cstring(set))
		e.list = e.open(unix.NFTA_SET_ELEM_LIST_ELEMENTS)
		e.set, e.typ = set, typ
		e.acks++
	}
	el := e.open(unix.NFTA_LIST_ELEM)
	k := e.open(unix.NFTA_SET_ELEM_KEY)
	e.out = appendAttr(e.out, unix.NFTA_DATA_VALUE, key)
	e.close(k)
	if val != nil {
		d := e.open(unix.NFTA_SET_ELEM_DATA)
		e.out = appendAttr(e.out, unix.NFTA_DATA_VALUE, val)
		e.close(d)
	}
	e.close(el)
}

// rule appends a rule with the encoded expressions exprs to chain.
func (e *elemConn) rule(chain string, exprs [][]byte) {
	if e.msg >= 0 {
		e.closeMsg()
	}
	off := e.header(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWRULE,
		unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_APPEND, unix.NFPROTO_INET, 0)
	e.out = appendAttr(e.out, unix.NFTA_RULE_TABLE, cstring(e.table))
	e.out = appendAttr(e.out, unix.NFTA_RULE_CHAIN, cstring(chain))
	list := e.open(unix.NFTA_RULE_EXPRESSIONS)
	for _, x := range exprs {
		e.out = appendAttr(e.out, unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, x)
	}
	e.close(list)
	e.finish(off)
	e.acks++
}

// raw adds a message encoded elsewhere (header included) to the
// transaction, with this transaction's sequence number and asking for an
// acknowledgement, padded so that the next message starts aligned.
func (e *elemConn) raw(msg []byte) {
	if len(msg) < unix.NLMSG_HDRLEN+nfgenmsgLen {
		if e.err == nil {
			e.err = fmt.Errorf("netlink message of %d bytes is too short", len(msg))
		}
		return
	}
	if e.msg >= 0 {
		e.closeMsg()
	}
	e.seq++
	off := len(e.out)
	e.out = append(e.out, msg...)
	h := e.out[off:]
	binary.NativeEndian.PutUint32(h[0:4], uint32(len(msg)))
	binary.NativeEndian.PutUint16(h[6:8], binary.NativeEndian.Uint16(h[6:8])|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(h[8:12], e.seq)
	binary.NativeEndian.PutUint32(h[12:16], 0)
	for len(e.out)%4 != 0 { // the next message starts aligned
		e.out = append(e.out, 0)
	}
	e.acks++
}

// empty reports whether the transaction changes nothing yet.
func (e *elemConn) empty() bool { return e.acks == 0 }

// commit ends the transaction, sends it as one atomic batch and waits for
// the kernel's answer to each of its messages. It returns the first error
// the kernel reported; the kernel then applied nothing.
func (e *elemConn) commit() error {
	if err := e.seal(); err != nil || e.acks == 0 {
		return err
	}
	first, last := e.seq-uint32(e.acks)-1, e.seq // sequence numbers of the batch
	if err := e.send(); err != nil {
		return err
	}
	var kerr error
	acks := e.acks
	err := e.receive(func(h unix.NlMsghdr, data []byte) (bool, error) {
		if h.Type != unix.NLMSG_ERROR || h.Seq-first > last-first {
			return false, nil // not ours: an answer to an earlier, failed exchange
		}
		errno := ackErrno(data)
		if errno != 0 && (h.Seq == first || h.Seq == last) {
			// About the batch as a whole (no permission, say): the
			// kernel looked at none of its messages.
			return true, fmt.Errorf("netlink transaction: %w", errno)
		}
		if errno != 0 && kerr == nil {
			kerr = fmt.Errorf("netlink transaction: %w", errno)
		}
		acks--
		return acks == 0, nil
	})
	if err != nil {
		return err
	}
	return kerr
}

// seal ends the transaction being built: the open element message and the
// batch end.
func (e *elemConn) seal() error {
	if e.msg >= 0 {
		e.closeMsg()
	}
	if e.acks == 0 {
		return nil
	}
	e.finish(e.header(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES))
	return e.err
}

// dumpCounters calls fn with the key and counter of every element of set,
// a set with counters.
func (e *elemConn) dumpCounters(set string, fn func(key []byte, packets, bytes uint64)) error {
	e.out = e.out[:0]
	e.msg = -1
	off := e.header(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM, unix.NLM_F_REQUEST|unix.NLM_F_DUMP,
		unix.NFPROTO_INET, 0)
	e.out = appendAttr(e.out, unix.NFTA_SET_ELEM_LIST_TABLE, cstring(e.table))
	e.out = appendAttr(e.out, unix.NFTA_SET_ELEM_LIST_SET, cstring(set))
	e.finish(off)
	seq := e.seq
	if err := e.send(); err != nil {
		return err
	}
	return e.receive(func(h unix.NlMsghdr, data []byte) (bool, error) {
		if h.Seq != seq {
			return false, nil
		}
		switch h.Type {
		case unix.NLMSG_DONE:
			// It may carry the error that ended the dump.
			if len(data) >= 4 {
				if errno := ackErrno(data); errno != 0 {
					return true, fmt.Errorf("dump set %s: %w", set, errno)
				}
			}
			return true, nil
		case unix.NLMSG_ERROR:
			if errno := ackErrno(data); errno != 0 {
				return true, fmt.Errorf("dump set %s: %w", set, errno)
			}
			return true, nil
		case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM:
			if len(data) >= nfgenmsgLen {
				forAttrs(data[nfgenmsgLen:], func(typ uint16, b []byte) {
					if typ == unix.NFTA_SET_ELEM_LIST_ELEMENTS {
						forAttrs(b, func(_ uint16, el []byte) { counterElem(el, fn) })
					}
				})
			}
		}
		return false, nil
	})
}

// ctTuple is the original direction of a UDP conntrack entry.
type ctTuple struct{ src, dst netip.AddrPort }

// ctDeletesPerSend bounds the delete requests of one datagram, and so the
// answers queued at once in the receive buffer.
const ctDeletesPerSend = 1024

// deleteConntrack removes the UDP conntrack entries whose tuple in either
// direction is one of tuples, each looked up by its hash rather than by a
// dump of the whole table, and returns how many it removed. A tuple
// without an entry is no error.
func (e *elemConn) deleteConntrack(tuples []ctTuple) (int, error) {
	removed := 0
	var first error
	for len(tuples) > 0 {
		chunk := tuples[:min(len(tuples), ctDeletesPerSend)]
		tuples = tuples[len(chunk):]
		e.out = e.out[:0]
		e.msg = -1
		seq0 := e.seq + 1
		for _, t := range chunk {
			family, srcA, dstA := uint8(unix.AF_INET), uint16(nl.CTA_IP_V4_SRC), uint16(nl.CTA_IP_V4_DST)
			if !t.src.Addr().Is4() {
				family, srcA, dstA = unix.AF_INET6, nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
			}
			off := e.header(unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_REQUEST|unix.NLM_F_ACK, family, 0)
			orig := e.open(nl.CTA_TUPLE_ORIG)
			ip := e.open(nl.CTA_TUPLE_IP)
			e.out = appendAttr(e.out, srcA, appendAddr(nil, t.src.Addr()))
			e.out = appendAttr(e.out, dstA, appendAddr(nil, t.dst.Addr()))
			e.close(ip)
			proto := e.open(nl.CTA_TUPLE_PROTO)
			e.out = appendAttr(e.out, nl.CTA_PROTO_NUM, []byte{unix.IPPROTO_UDP})
			e.out = appendAttr(e.out, nl.CTA_PROTO_SRC_PORT, binary.BigEndian.AppendUint16(nil, t.src.Port()))
			e.out = appendAttr(e.out, nl.CTA_PROTO_DST_PORT, binary.BigEndian.AppendUint16(nil, t.dst.Port()))
			e.close(proto)
			e.close(orig)
			e.finish(off)
		}
		if err := e.send(); err != nil {
			return removed, err
		}
		pending := len(chunk)
		err := e.receive(func(h unix.NlMsghdr, data []byte) (bool, error) {
			if h.Type != unix.NLMSG_ERROR || h.Seq-seq0 >= uint32(len(chunk)) {
				return false, nil
			}
			switch errno := ackErrno(data); errno {
			case 0:
				removed++
			case unix.ENOENT:
			default:
				if first == nil {
					first = fmt.Errorf("delete conntrack entry: %w", errno)
				}
			}
			pending--
			return pending == 0, nil
		})
		if err != nil {
			return removed, err
		}
	}
	return removed, first
}

// nftaSetElemExpressions is NFTA_SET_ELEM_EXPRESSIONS: a list of
// expressions, what the kernel sends for an element with more than one.
const nftaSetElemExpressions = 11

// counterElem decodes one element of a counter set.
func counterElem(el []byte, fn func(key []byte, packets, bytes uint64)) {
	var key []byte
	var packets, bytes uint64
	counter := func(ex []byte) {
		var name, data []byte
		forAttrs(ex, func(typ uint16, b []byte) {
			switch typ {
			case unix.NFTA_EXPR_NAME:
				name = b
			case unix.NFTA_EXPR_DATA:
				data = b
			}
		})
		if string(name) != "counter\x00" {
			return
		}
		forAttrs(data, func(typ uint16, b []byte) {
			if len(b) != 8 {
				return
			}
			switch typ {
			case unix.NFTA_COUNTER_PACKETS:
				packets = binary.BigEndian.Uint64(b)
			case unix.NFTA_COUNTER_BYTES:
				bytes = binary.BigEndian.Uint64(b)
			}
		})
	}
	forAttrs(el, func(typ uint16, b []byte) {
		switch typ {
		case unix.NFTA_SET_ELEM_KEY:
			forAttrs(b, func(typ uint16, v []byte) {
				if typ == unix.NFTA_DATA_VALUE {
					key = v
				}
			})
		case unix.NFTA_SET_ELEM_EXPR:
			counter(b)
		case nftaSetElemExpressions:
			forAttrs(b, func(_ uint16, ex []byte) { counter(ex) })
		}
	})
	if key != nil {
		fn(key, packets, bytes)
	}
}

// send writes the built messages in one datagram.
func (e *elemConn) send() error {
	var serr error
	err := e.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), e.out, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("netlink send (%d bytes): %w", len(e.out), err)
	}
	return nil
}

// receive reads datagrams and hands each message to fn until fn reports
// that it has seen the last one or fails.
func (e *elemConn) receive(fn func(h unix.NlMsghdr, data []byte) (bool, error)) error {
	if err := e.c.SetReadDeadline(time.Now().Add(elemIOTimeout)); err != nil {
		return fmt.Errorf("netlink deadline: %w", err)
	}
	defer e.c.SetReadDeadline(time.Time{})
	for {
		var n int
		var rerr error
		err := e.rc.Read(func(fd uintptr) bool {
			var flags int
			n, _, flags, _, rerr = unix.Recvmsg(int(fd), e.in, nil, 0)
			if rerr == nil && flags&unix.MSG_TRUNC != 0 {
				rerr = fmt.Errorf("netlink message longer than %d bytes", len(e.in))
			}
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("netlink receive: no answer within %v: %w", elemIOTimeout, err)
			}
			return fmt.Errorf("netlink receive: %w", err)
		}
		b := e.in[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			h := unix.NlMsghdr{
				Len:   binary.NativeEndian.Uint32(b[0:4]),
				Type:  binary.NativeEndian.Uint16(b[4:6]),
				Flags: binary.NativeEndian.Uint16(b[6:8]),
				Seq:   binary.NativeEndian.Uint32(b[8:12]),
				Pid:   binary.NativeEndian.Uint32(b[12:16]),
			}
			if h.Len < unix.NLMSG_HDRLEN || int(h.Len) > len(b) {
				return fmt.Errorf("netlink receive: malformed message")
			}
			done, err := fn(h, b[unix.NLMSG_HDRLEN:h.Len])
			if err != nil || done {
				return err
			}
			b = b[min(len(b), nlAlign(int(h.Len))):]
		}
	}
}

// header starts a message with its nfgenmsg and returns its offset.
func (e *elemConn) header(typ, flags uint16, family uint8, resID uint16) int {
	e.seq++
	off := len(e.out)
	e.out = binary.NativeEndian.AppendUint32(e.out, 0) // length, set by finish
	e.out = binary.NativeEndian.AppendUint16(e.out, typ)
	e.out = binary.NativeEndian.AppendUint16(e.out, flags)
	e.out = binary.NativeEndian.AppendUint32(e.out, e.seq)
	e.out = binary.NativeEndian.AppendUint32(e.out, 0)
	e.out = append(e.out, family, unix.NFNETLINK_V0)
	e.out = binary.BigEndian.AppendUint16(e.out, resID)
	return off
}

// finish sets the length of the message at off, which ends here.
func (e *elemConn) finish(off int) {
	binary.NativeEndian.PutUint32(e.out[off:], uint32(len(e.out)-off))
}

// closeMsg ends the open element message.
func (e *elemConn) closeMsg() {
	e.close(e.list)
	binary.NativeEndian.PutUint32(e.out[e.msg:], uint32(len(e.out)-e.msg))
	e.msg = -1
}

// open starts a nested attribute and returns its offset.
func (e *elemConn) open(typ uint16) int {
	off := len(e.out)
	e.out = binary.NativeEndian.AppendUint16(e.out, 0)
	e.out = binary.NativeEndian.AppendUint16(e.out, typ|unix.NLA_F_NESTED)
	return off
}

// close sets the length of the nested attribute at off.
func (e *elemConn) close(off int) {
	n := len(e.out) - off
	if n > 0xffff {
		if e.err == nil {
			e.err = fmt.Errorf("netlink attribute of %d bytes is too long", n)
		}
		return
	}
	binary.NativeEndian.PutUint16(e.out[off:], uint16(n))
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for range nlAlign(len(data)) - len(data) {
		b = append(b, 0)
	}
	return b
}

// forAttrs calls fn with the type (without flags) and payload of each
// attribute in b.
func forAttrs(b []byte, fn func(typ uint16, data []byte)) {
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		if n < 4 || n > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[4:n])
		b = b[min(len(b), nlAlign(n)):]
	}
}

// ackErrno is the error of an NLMSG_ERROR message, 0 for an
// acknowledgement.
func ackErrno(data []byte) syscall.Errno {
	if len(data) < 4 {
		return unix.EPROTO
	}
	return syscall.Errno(-int32(binary.NativeEndian.Uint32(data[:4])))
}

func attrLen(n int) int { return nlAlign(4 + n) }

func nlAlign(n int) int { return (n + 3) &^ 3 }

// cstring is s with a terminating NUL, as netlink strings are sent.
func cstring(s string) []byte { return append([]byte(s), 0) }

// nlaTypeMask strips the nested and byte-order flags from an attribute type.
const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
