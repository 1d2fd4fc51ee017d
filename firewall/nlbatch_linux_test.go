//go:build linux

package firewall

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// decodedElem is one element change read back from an encoded batch.
type decodedElem struct {
	set      string
	del      bool
	key, val []byte
}

// decodeBatch parses a transaction built by elemConn and fails the test on
// anything malformed: the batch must begin and end, each message's length
// must cover it exactly, and every element list must fit an attribute.
func decodeBatch(t *testing.T, b []byte) (elems []decodedElem, msgs int) {
	t.Helper()
	var types []uint16
	for len(b) > 0 {
		if len(b) < unix.NLMSG_HDRLEN+nfgenmsgLen {
			t.Fatalf("%d bytes left, too short for a message", len(b))
		}
		n := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		if n < unix.NLMSG_HDRLEN+nfgenmsgLen || n > len(b) {
			t.Fatalf("message length %d with %d bytes left", n, len(b))
		}
		types = append(types, typ)
		body := b[unix.NLMSG_HDRLEN+nfgenmsgLen : n]
		var set string
		forAttrs(body, func(at uint16, data []byte) {
			switch at {
			case unix.NFTA_SET_ELEM_LIST_SET:
				set = string(bytes.TrimRight(data, "\x00"))
			case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
				if len(data)+4 > 0xffff {
					t.Errorf("element list of %d bytes", len(data)+4)
				}
				forAttrs(data, func(_ uint16, el []byte) {
					d := decodedElem{set: set, del: typ&0xff == unix.NFT_MSG_DELSETELEM}
					forAttrs(el, func(et uint16, v []byte) {
						forAttrs(v, func(vt uint16, x []byte) {
							if vt != unix.NFTA_DATA_VALUE {
								return
							}
							switch et {
							case unix.NFTA_SET_ELEM_KEY:
								d.key = x
							case unix.NFTA_SET_ELEM_DATA:
								d.val = x
							}
						})
					})
					elems = append(elems, d)
				})
			}
		})
		b = b[nlAlign(n):]
	}
	if len(types) < 2 || types[0] != unix.NFNL_MSG_BATCH_BEGIN || types[len(types)-1] != unix.NFNL_MSG_BATCH_END {
		t.Fatalf("message types %v: want a batch begin first and a batch end last", types)
	}
	return elems, len(types) - 2
}

// TestElemConnEncoding builds a transaction of thousands of elements over
// two sets and two operations and reads it back: every element is there
// with its key and value, in order, and the elements share few messages.
func TestElemConnEncoding(t *testing.T) {
	e := &elemConn{table: TableName}
	e.begin()
	var want []decodedElem
	const adds = 3000
	for i := range adds {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), uint16(4000+i))
		dst := netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), uint16(i))
		set, key, val := "media_dnat4", tupleKey(src, src), target(src)
		if i%2 == 1 {
			set, key, val = "media_dnat6", tupleKey(dst, dst), target(dst)
		}
		if i >= adds/2 {
			// The second half goes to one set only, so the set changes
			// just once there.
			set, key, val = "media_local4", tupleKey(src, src), nil
		}
		e.elem(set, false, key, val)
		want = append(want, decodedElem{set: set, key: key, val: val})
	}
	e.elem("media_pin4", true, pinKey(netip.MustParseAddrPort("192.0.2.1:30000"), netip.MustParseAddr("198.51.100.7")), nil)
	want = append(want, decodedElem{set: "media_pin4", del: true,
		key: pinKey(netip.MustParseAddrPort("192.0.2.1:30000"), netip.MustParseAddr("198.51.100.7"))})
	if err := e.seal(); err != nil {
		t.Fatal(err)
	}
	got, msgs := decodeBatch(t, e.out)
	if msgs != e.acks {
		t.Errorf("%d element messages, but %d acknowledgements expected", msgs, e.acks)
	}
	if len(got) != len(want) {
		t.Fatalf("decoded %d elements, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.set != w.set || g.del != w.del || !bytes.Equal(g.key, w.key) || !bytes.Equal(g.val, w.val) {
			t.Fatalf("element %d: got %+v, want %+v", i, g, w)
		}
	}
	// 1,500 alternating elements need one message each; the 1,500 of one
	// set fit a few messages; then the pinhole.
	if limit := adds/2 + 10; msgs > limit {
		t.Errorf("%d messages for %d elements, want at most %d", msgs, len(want), limit)
	}
}

// counterElemBytes encodes one element of a counter set as the kernel dumps
// it, with the counter as a single expression or in a list.
func counterElemBytes(key []byte, packets, bytes uint64, list bool) []byte {
	var data []byte
	data = appendAttr(data, unix.NFTA_COUNTER_BYTES, binary.BigEndian.AppendUint64(nil, bytes))
	data = appendAttr(data, unix.NFTA_COUNTER_PACKETS, binary.BigEndian.AppendUint64(nil, packets))
	var ex []byte
	ex = appendAttr(ex, unix.NFTA_EXPR_NAME, cstring("counter"))
	ex = appendAttr(ex, unix.NFTA_EXPR_DATA|unix.NLA_F_NESTED, data)
	var el []byte
	el = appendAttr(el, unix.NFTA_SET_ELEM_KEY|unix.NLA_F_NESTED, appendAttr(nil, unix.NFTA_DATA_VALUE, key))
	if list {
		el = appendAttr(el, nftaSetElemExpressions|unix.NLA_F_NESTED, appendAttr(nil, unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED, ex))
	} else {
		el = appendAttr(el, unix.NFTA_SET_ELEM_EXPR|unix.NLA_F_NESTED, ex)
	}
	return el
}

func TestCounterElem(t *testing.T) {
	key := tupleKey(netip.MustParseAddrPort("10.0.0.1:4000"), netip.MustParseAddrPort("10.0.0.2:5000"))
	for _, list := range []bool{false, true} {
		t.Run(fmt.Sprintf("list=%v", list), func(t *testing.T) {
			calls := 0
			counterElem(counterElemBytes(key, 7, 1204, list), func(k []byte, packets, bytes_ uint64) {
				calls++
				if !bytes.Equal(k, key) || packets != 7 || bytes_ != 1204 {
					t.Errorf("got key %x packets %d bytes %d, want %x 7 1204", k, packets, bytes_, key)
				}
			})
			if calls != 1 {
				t.Errorf("fn called %d times, want once", calls)
			}
		})
	}
}

// FuzzCounterElem feeds arbitrary bytes to the counter dump decoder: it
// must never panic nor report a key it did not find.
func FuzzCounterElem(f *testing.F) {
	key := tupleKey(netip.MustParseAddrPort("10.0.0.1:4000"), netip.MustParseAddrPort("10.0.0.2:5000"))
	f.Add(counterElemBytes(key, 1, 2, false))
	f.Add(counterElemBytes(key, 1, 2, true))
	f.Add([]byte{0xff, 0xff, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		counterElem(b, func(k []byte, _, _ uint64) {
			if k == nil {
				t.Error("fn called without a key")
			}
		})
		forAttrs(b, func(uint16, []byte) {})
	})
}

// TestElemConnRaw checks that a message encoded elsewhere joins the
// transaction with its sequence number, an acknowledgement asked for and
// its length padded to netlink's alignment, between the batch's begin and
// end.
func TestElemConnRaw(t *testing.T) {
	e := &elemConn{table: TableName}
	e.begin()
	msg := make([]byte, 16+4+5) // header, nfgenmsg, 5 bytes of payload
	binary.NativeEndian.PutUint16(msg[4:], unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWCHAIN)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_CREATE)
	binary.NativeEndian.PutUint32(msg[8:], 777)
	e.raw(msg)
	e.raw(msg[:10]) // too short: an error, nothing added
	if err := e.seal(); err == nil {
		t.Error("seal accepted a message shorter than a header")
	}
	if e.acks != 1 {
		t.Errorf("%d acknowledgements expected, want 1", e.acks)
	}
	var seqs []uint32
	for b := e.out; len(b) >= 16; {
		n := int(binary.NativeEndian.Uint32(b))
		if nlAlign(n) > len(b) {
			t.Fatalf("message of length %d in %d bytes", n, len(b))
		}
		typ, flags := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint16(b[6:])
		seqs = append(seqs, binary.NativeEndian.Uint32(b[8:]))
		if typ == unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWCHAIN && flags != unix.NLM_F_CREATE|unix.NLM_F_REQUEST|unix.NLM_F_ACK {
			t.Errorf("flags %#x, want create, request and ack", flags)
		}
		if typ == unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWCHAIN && n != len(msg) {
			t.Errorf("length %d, want the message's %d", n, len(msg))
		}
		b = b[nlAlign(n):]
	}
	if len(e.out)%4 != 0 {
		t.Errorf("the batch is %d bytes long: not aligned", len(e.out))
	}
	if len(seqs) != 3 || seqs[1] != seqs[0]+1 || seqs[2] != seqs[1]+1 {
		t.Errorf("sequence numbers %v, want three consecutive ones (begin, message, end)", seqs)
	}
}
