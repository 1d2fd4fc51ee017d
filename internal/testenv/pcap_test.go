package testenv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pcapFile builds a classic pcap file in memory, the way tcpdump -w lays
// it out, so the reader is tested against every variant it claims to read.
type pcapFile struct {
	order binary.ByteOrder
	nano  bool
	buf   bytes.Buffer
}

func newPcap(order binary.ByteOrder, nano bool, link uint32) *pcapFile {
	f := &pcapFile{order: order, nano: nano}
	magic := uint32(pcapMagicMicro)
	if nano {
		magic = pcapMagicNano
	}
	hdr := make([]byte, pcapHeaderLen)
	order.PutUint32(hdr[0:4], magic)
	order.PutUint16(hdr[4:6], 2)
	order.PutUint16(hdr[6:8], 4)
	order.PutUint32(hdr[16:20], 262144)
	order.PutUint32(hdr[20:24], link)
	f.buf.Write(hdr)
	return f
}

// add appends a record; origLen above len(frame) marks it cut by snaplen.
func (f *pcapFile) add(ts time.Time, frame []byte, origLen int) {
	rec := make([]byte, pcapRecordLen)
	f.order.PutUint32(rec[0:4], uint32(ts.Unix()))
	if f.nano {
		f.order.PutUint32(rec[4:8], uint32(ts.Nanosecond()))
	} else {
		f.order.PutUint32(rec[4:8], uint32(ts.Nanosecond()/1000))
	}
	f.order.PutUint32(rec[8:12], uint32(len(frame)))
	f.order.PutUint32(rec[12:16], uint32(max(origLen, len(frame))))
	f.buf.Write(rec)
	f.buf.Write(frame)
}

var (
	macA = []byte{0x02, 0, 0, 0, 0, 0xa}
	macB = []byte{0x02, 0, 0, 0, 0, 0xb}
)

func ether(etherType uint16, payload []byte) []byte {
	b := append(append(append([]byte{}, macB...), macA...), byte(etherType>>8), byte(etherType))
	b = append(b, payload...)
	for len(b) < 60 { // minimum frame size: the padding the reader must drop
		b = append(b, 0)
	}
	return b
}

func vlan(id uint16, etherType uint16, payload []byte) []byte {
	inner := append([]byte{byte(id >> 8), byte(id), byte(etherType >> 8), byte(etherType)}, payload...)
	return ether(etherTypeVLAN, inner)
}

func sll(etherType uint16, payload []byte) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint16(b[2:4], 1) // ARPHRD_ETHER
	binary.BigEndian.PutUint16(b[4:6], 6)
	copy(b[6:12], macA)
	binary.BigEndian.PutUint16(b[14:16], etherType)
	return append(b, payload...)
}

func sll2(etherType uint16, payload []byte) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:2], etherType)
	binary.BigEndian.PutUint32(b[4:8], 3) // interface index
	binary.BigEndian.PutUint16(b[8:10], 1)
	b[11] = 6
	copy(b[12:18], macA)
	return append(b, payload...)
}

func udp(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	binary.BigEndian.PutUint16(b[4:6], uint16(8+len(payload)))
	return append(b, payload...)
}

// ipv4 builds a header; fragOff is in bytes and must be a multiple of 8.
func ipv4(src, dst string, proto uint8, id uint16, more bool, fragOff int, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(b[4:6], id)
	flags := uint16(fragOff / 8)
	if more {
		flags |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:8], flags)
	b[8] = 64
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	return append(b, payload...)
}

// ipv6 builds a header followed by the given extension headers and payload.
func ipv6(src, dst string, next uint8, payload []byte) []byte {
	b := make([]byte, 40, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(payload)))
	b[6] = next
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	return append(b, payload...)
}

func ipv6Frag(next uint8, id uint32, off int, more bool, data []byte) []byte {
	b := make([]byte, 8, 8+len(data))
	b[0] = next
	field := uint16(off)
	if more {
		field |= 1
	}
	binary.BigEndian.PutUint16(b[2:4], field)
	binary.BigEndian.PutUint32(b[4:8], id)
	return append(b, data...)
}

func hopByHop(next uint8, payload []byte) []byte {
	// Eight bytes: next header, length 0, a PadN option filling the rest.
	return append([]byte{next, 0, 1, 4, 0, 0, 0, 0}, payload...)
}

func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "test.pcap")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadPcapLinkTypes(t *testing.T) {
	ts := time.Date(2024, 5, 1, 12, 0, 0, 123456000, time.UTC)
	sip := []byte("INVITE sip:100@203.0.113.1 SIP/2.0\r\n")
	tests := []struct {
		name  string
		order binary.ByteOrder
		nano  bool
		link  uint32
		frame []byte
		want  Packet
	}{{
		name:  "ethernet padded",
		order: binary.LittleEndian, link: linkEthernet,
		frame: ether(etherTypeIPv4, ipv4("203.0.113.1", "203.0.113.2", ProtoUDP, 1, false, 0, udp(5060, 5062, []byte("hi")))),
		want:  Packet{Time: ts, Proto: ProtoUDP, Src: addrPort("203.0.113.1:5060"), Dst: addrPort("203.0.113.2:5062"), Payload: []byte("hi")},
	}, {
		name:  "ethernet vlan",
		order: binary.LittleEndian, link: linkEthernet,
		frame: vlan(91, etherTypeIPv4, ipv4("10.91.1.2", "10.91.1.1", ProtoUDP, 2, false, 0, udp(5060, 5060, sip))),
		want:  Packet{Time: ts, Proto: ProtoUDP, Src: addrPort("10.91.1.2:5060"), Dst: addrPort("10.91.1.1:5060"), Payload: sip},
	}, {
		name:  "linux cooked v1",
		order: binary.LittleEndian, link: linkLinuxSLL,
		frame: sll(etherTypeIPv4, ipv4("10.91.1.1", "10.91.1.2", ProtoUDP, 3, false, 0, udp(20000, 6000, sip))),
		want:  Packet{Time: ts, Proto: ProtoUDP, Src: addrPort("10.91.1.1:20000"), Dst: addrPort("10.91.1.2:6000"), Payload: sip},
	}, {
		name:  "linux cooked v2",
		order: binary.LittleEndian, link: linkLinuxSLL2,
		frame: sll2(etherTypeIPv4, ipv4("10.91.1.1", "10.91.1.2", ProtoUDP, 4, false, 0, udp(20002, 6000, sip))),
		want:  Packet{Time: ts, Proto: ProtoUDP, Src: addrPort("10.91.1.1:20002"), Dst: addrPort("10.91.1.2:6000"), Payload: sip},
	}, {
		name:  "raw ipv6 with hop-by-hop header, big endian, nanoseconds",
		order: binary.BigEndian, nano: true, link: linkRaw,
		frame: ipv6("2001:db8::1", "2001:db8::2", ipv6HopByHop, hopByHop(ProtoUDP, udp(5060, 5060, sip))),
		want:  Packet{Time: ts, Proto: ProtoUDP, Src: addrPort("[2001:db8::1]:5060"), Dst: addrPort("[2001:db8::2]:5060"), Payload: sip},
	}, {
		name:  "icmp keeps the ip payload",
		order: binary.LittleEndian, link: linkIPv4,
		frame: ipv4("203.0.113.2", "203.0.113.1", ProtoICMP, 5, false, 0, []byte{3, 3, 0, 0, 0, 0, 0, 0}),
		want:  Packet{Time: ts, Proto: ProtoICMP, Src: addrPort("203.0.113.2:0"), Dst: addrPort("203.0.113.1:0"), Payload: []byte{3, 3, 0, 0, 0, 0, 0, 0}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newPcap(tt.order, tt.nano, tt.link)
			f.add(ts, ether(0x0806, make([]byte, 28)), 0) // ARP: skipped on any link type
			f.add(ts, tt.frame, 0)
			got, err := ParsePcap(&f.buf)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 {
				t.Fatalf("got %d packets, want 1: %+v", len(got), got)
			}
			checkPacket(t, got[0], tt.want)
		})
	}
}

func checkPacket(t *testing.T, got, want Packet) {
	t.Helper()
	if !got.Time.Equal(want.Time) || got.Proto != want.Proto || got.Src != want.Src || got.Dst != want.Dst ||
		!bytes.Equal(got.Payload, want.Payload) || got.Incomplete != want.Incomplete {
		t.Errorf("packet mismatch\n got: %v %d %v > %v %q incomplete=%v\nwant: %v %d %v > %v %q incomplete=%v",
			got.Time, got.Proto, got.Src, got.Dst, got.Payload, got.Incomplete,
			want.Time, want.Proto, want.Src, want.Dst, want.Payload, want.Incomplete)
	}
}

func TestReadPcapFragments(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	body := []byte(strings.Repeat("v=0 o=- 1 1 IN IP4 203.0.113.1 ", 6)) // 186 bytes
	dgram := udp(5060, 5060, body)                                       // 194 bytes

	f := newPcap(binary.LittleEndian, false, linkEthernet)
	// IPv4, second fragment captured first.
	f.add(ts, ether(etherTypeIPv4, ipv4("203.0.113.1", "203.0.113.2", ProtoUDP, 77, false, 96, dgram[96:])), 0)
	f.add(ts.Add(time.Millisecond), ether(etherTypeIPv4, ipv4("203.0.113.1", "203.0.113.2", ProtoUDP, 77, true, 0, dgram[:96])), 0)
	// IPv6, in order.
	f.add(ts.Add(2*time.Millisecond), ether(etherTypeIPv6, ipv6("2001:db8::1", "2001:db8::2", ipv6Fragment, ipv6Frag(ProtoUDP, 9, 0, true, dgram[:104]))), 0)
	f.add(ts.Add(3*time.Millisecond), ether(etherTypeIPv6, ipv6("2001:db8::1", "2001:db8::2", ipv6Fragment, ipv6Frag(ProtoUDP, 9, 104, false, dgram[104:]))), 0)
	// IPv4 whose first fragment never arrives.
	f.add(ts.Add(4*time.Millisecond), ether(etherTypeIPv4, ipv4("203.0.113.1", "203.0.113.2", ProtoUDP, 78, false, 96, dgram[96:])), 0)
	// A whole packet after the fragments keeps its place in capture order.
	f.add(ts.Add(5*time.Millisecond), ether(etherTypeIPv4, ipv4("203.0.113.2", "203.0.113.1", ProtoUDP, 79, false, 0, udp(5060, 5060, []byte("ok")))), 0)

	got, err := ParsePcap(&f.buf)
	if err != nil {
		t.Fatal(err)
	}
	want := []Packet{
		{Time: ts.Add(time.Millisecond), Proto: ProtoUDP, Src: addrPort("203.0.113.1:5060"), Dst: addrPort("203.0.113.2:5060"), Payload: body},
		{Time: ts.Add(3 * time.Millisecond), Proto: ProtoUDP, Src: addrPort("[2001:db8::1]:5060"), Dst: addrPort("[2001:db8::2]:5060"), Payload: body},
		{Time: ts.Add(5 * time.Millisecond), Proto: ProtoUDP, Src: addrPort("203.0.113.2:5060"), Dst: addrPort("203.0.113.1:5060"), Payload: []byte("ok")},
		{
			Time: ts.Add(4 * time.Millisecond), Proto: ProtoUDP, Src: addrPort("203.0.113.1:0"), Dst: addrPort("203.0.113.2:0"),
			Payload: append(make([]byte, 96), dgram[96:]...), Incomplete: true,
		},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d packets, want %d", len(got), len(want))
	}
	for i := range want {
		checkPacket(t, got[i], want[i])
	}
}

func TestReadPcapTruncated(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	payload := []byte("0123456789abcdef")
	frame := ether(etherTypeIPv4, ipv4("203.0.113.1", "203.0.113.2", ProtoUDP, 1, false, 0, udp(20000, 6000, payload)))

	t.Run("snaplen", func(t *testing.T) {
		f := newPcap(binary.LittleEndian, false, linkEthernet)
		f.add(ts, frame[:14+20+8+4], len(frame))
		got, err := ParsePcap(&f.buf)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Fatalf("got %d packets, want 1", len(got))
		}
		checkPacket(t, got[0], Packet{Time: ts, Proto: ProtoUDP, Src: addrPort("203.0.113.1:20000"), Dst: addrPort("203.0.113.2:6000"), Payload: payload[:4], Incomplete: true})
	})

	t.Run("file cut mid-record", func(t *testing.T) {
		f := newPcap(binary.LittleEndian, false, linkEthernet)
		f.add(ts, frame, 0)
		f.add(ts, frame, 0)
		b := f.buf.Bytes()
		got, err := ParsePcap(bytes.NewReader(b[:len(b)-10]))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
		}
		if len(got) != 1 {
			t.Fatalf("got %d packets before the cut, want 1", len(got))
		}
	})
}

func TestReadPcapErrors(t *testing.T) {
	bad := newPcap(binary.LittleEndian, false, 105) // 802.11
	pcapng := []byte{0x0a, 0x0d, 0x0d, 0x0a, 0x1c, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	huge := newPcap(binary.LittleEndian, false, linkEthernet)
	rec := make([]byte, pcapRecordLen)
	binary.LittleEndian.PutUint32(rec[8:12], maxPcapRecord+1)
	huge.buf.Write(rec)
	for _, tt := range []struct {
		name, want string
		data       []byte
	}{
		{"empty", "unexpected EOF", nil},
		{"short header", "unexpected EOF", []byte{0xd4, 0xc3, 0xb2, 0xa1}},
		{"not pcap", "not a pcap file", []byte(strings.Repeat("x", pcapHeaderLen))},
		{"pcapng", "pcapng", pcapng},
		{"link type", "unsupported link type 105", bad.buf.Bytes()},
		{"oversized record", "corrupt", huge.buf.Bytes()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePcap(bytes.NewReader(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
	if _, err := ReadPcap(filepath.Join(t.TempDir(), "missing.pcap")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want os.ErrNotExist", err)
	}
}

// TestReadUDPTcpdumpFile reads a file tcpdump wrote: the first three RTP
// packets of SIPp's g711a.pcap.
func TestReadUDPTcpdumpFile(t *testing.T) {
	got, err := ReadUDP("testdata/g711a-head.pcap")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d packets, want 3", len(got))
	}
	var lastSeq uint16
	for i, p := range got {
		if p.Src != addrPort("10.1.3.143:5000") || p.Dst != addrPort("10.1.6.18:2006") {
			t.Errorf("packet %d: %v > %v", i, p.Src, p.Dst)
		}
		// RTP (RFC 3550 §5.1): version 2, payload type 8 (PCMA), 12-byte
		// header and 30 ms of A-law at 8 kHz.
		if len(p.Payload) != 252 || p.Payload[0]>>6 != 2 || p.Payload[1]&0x7f != 8 {
			t.Errorf("packet %d: not PCMA RTP: len %d, % x", i, len(p.Payload), p.Payload[:min(len(p.Payload), 4)])
			continue
		}
		seq := binary.BigEndian.Uint16(p.Payload[2:4])
		if i > 0 && seq != lastSeq+1 {
			t.Errorf("packet %d: sequence %d after %d", i, seq, lastSeq)
		}
		lastSeq = seq
	}
	if d := got[2].Time.Sub(got[0].Time); d < 50*time.Millisecond || d > 70*time.Millisecond {
		t.Errorf("three 30 ms packets span %v", d)
	}
}

func TestReadUDPFiltersProtocols(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	f := newPcap(binary.LittleEndian, false, linkEthernet)
	f.add(ts, ether(etherTypeIPv4, ipv4("203.0.113.2", "203.0.113.1", ProtoICMP, 1, false, 0, []byte{3, 3, 0, 0})), 0)
	f.add(ts, ether(etherTypeIPv4, ipv4("203.0.113.2", "203.0.113.1", ProtoUDP, 2, false, 0, udp(1, 2, []byte("a")))), 0)
	path := writeTemp(t, f.buf.Bytes())
	all, err := ReadPcap(path)
	if err != nil || len(all) != 2 {
		t.Fatalf("ReadPcap: %d packets, err %v; want 2", len(all), err)
	}
	got, err := ReadUDP(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Proto != ProtoUDP || string(got[0].Payload) != "a" {
		t.Fatalf("ReadUDP = %+v, want the one UDP packet", got)
	}
}

func FuzzParsePcap(f *testing.F) {
	ts := time.Unix(1700000000, 0)
	seed := newPcap(binary.LittleEndian, false, linkEthernet)
	seed.add(ts, ether(etherTypeIPv4, ipv4("10.0.0.1", "10.0.0.2", ProtoUDP, 1, true, 0, udp(1, 2, make([]byte, 16)))), 0)
	seed.add(ts, vlan(1, etherTypeIPv6, ipv6("::1", "::2", ipv6Fragment, ipv6Frag(ProtoUDP, 1, 8, false, []byte("x")))), 0)
	f.Add(seed.buf.Bytes())
	seed2 := newPcap(binary.BigEndian, true, linkLinuxSLL2)
	seed2.add(ts, sll2(etherTypeIPv6, ipv6("::1", "::2", ipv6HopByHop, hopByHop(ProtoTCP, make([]byte, 24)))), 0)
	f.Add(seed2.buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		pkts, _ := ParsePcap(bytes.NewReader(data))
		for _, p := range pkts {
			if !p.Src.Addr().IsValid() || !p.Dst.Addr().IsValid() {
				t.Fatalf("packet without addresses: %+v", p)
			}
		}
	})
}
