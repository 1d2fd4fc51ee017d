package testenv

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"time"
)

// IP protocol numbers found in Packet.Proto.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Packet is one IP packet read from a capture file, reassembled when it
// was sent as IP fragments.
type Packet struct {
	// Time is the capture timestamp of the packet (of its last fragment).
	Time time.Time
	// Proto is the IP protocol number (next header, for IPv6).
	Proto uint8
	// Src and Dst are the IP addresses, with the ports for UDP and TCP.
	// The port is zero for every other protocol.
	Src, Dst netip.AddrPort
	// Payload is the UDP or TCP payload, or the whole IP payload for other
	// protocols (for ICMP that includes the quoted packet).
	Payload []byte
	// Incomplete is set when part of the packet is missing from the file:
	// cut by the snapshot length, or fragments that never arrived. Payload
	// then holds what was captured, with zeros for missing fragments.
	Incomplete bool
}

// pcap file format constants (https://www.tcpdump.org/manpages/pcap-savefile.5.txt
// and https://www.tcpdump.org/linktypes.html).
const (
	pcapMagicMicro  = 0xa1b2c3d4
	pcapMagicNano   = 0xa1b23c4d
	pcapngMagic     = 0x0a0d0d0a
	pcapHeaderLen   = 24
	pcapRecordLen   = 16
	maxPcapRecord   = 1 << 20 // far above any snapshot length tcpdump uses
	linkEthernet    = 1
	linkRaw         = 101
	linkLinuxSLL    = 113
	linkIPv4        = 228
	linkIPv6        = 229
	linkLinuxSLL2   = 276
	etherTypeIPv4   = 0x0800
	etherTypeIPv6   = 0x86dd
	etherTypeVLAN   = 0x8100
	etherTypeQinQ   = 0x88a8
	maxIPv6Headers  = 8 // extension headers followed before giving up
	ipv6HopByHop    = 0
	ipv6Routing     = 43
	ipv6Fragment    = 44
	ipv6AuthHeader  = 51
	ipv6DestOptions = 60
)

// ReadUDP returns the UDP packets of the capture file at path, in capture
// order (see ReadPcap).
func ReadUDP(path string) ([]Packet, error) {
	pkts, err := ReadPcap(path)
	udp := slices.DeleteFunc(pkts, func(p Packet) bool { return p.Proto != ProtoUDP })
	return udp, err
}

// ReadPcap returns every IPv4 and IPv6 packet of the classic pcap file at
// path (what tcpdump -w writes), skipping other frames such as ARP. It reads
// Ethernet (with 802.1Q tags), Linux cooked (v1 and v2, tcpdump -i any) and
// raw IP link types, either byte order, micro- or nanosecond timestamps.
//
// A file cut short, as when tcpdump was killed mid-write, yields the packets
// read so far together with an error wrapping io.ErrUnexpectedEOF.
func ReadPcap(path string) ([]Packet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read pcap: %w", err)
	}
	defer f.Close()
	pkts, err := ParsePcap(bufio.NewReader(f))
	if err != nil {
		return pkts, fmt.Errorf("read pcap %s: %w", path, err)
	}
	return pkts, nil
}

// ParsePcap is ReadPcap on a stream.
func ParsePcap(r io.Reader) ([]Packet, error) {
	var hdr [pcapHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("file header: %w", noEOF(err))
	}
	var (
		order binary.ByteOrder
		nano  bool
	)
	switch magic := binary.LittleEndian.Uint32(hdr[0:4]); magic {
	case pcapMagicMicro:
		order = binary.LittleEndian
	case pcapMagicNano:
		order, nano = binary.LittleEndian, true
	case bswap(pcapMagicMicro):
		order = binary.BigEndian
	case bswap(pcapMagicNano):
		order, nano = binary.BigEndian, true
	case pcapngMagic:
		return nil, errors.New("pcapng files are not supported; write classic pcap (tcpdump -w)")
	default:
		return nil, fmt.Errorf("not a pcap file (magic %#08x)", magic)
	}
	// The upper bits of the link type field carry FCS information.
	link := order.Uint32(hdr[20:24]) & 0x0fffffff
	switch link {
	case linkEthernet, linkRaw, linkLinuxSLL, linkIPv4, linkIPv6, linkLinuxSLL2:
	default:
		return nil, fmt.Errorf("unsupported link type %d", link)
	}

	d := newDecoder()
	for n := 0; ; n++ {
		var rec [pcapRecordLen]byte
		if _, err := io.ReadFull(r, rec[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return d.finish(), nil
			}
			return d.finish(), fmt.Errorf("record %d header: %w", n, noEOF(err))
		}
		sec, frac := order.Uint32(rec[0:4]), order.Uint32(rec[4:8])
		inclLen, origLen := order.Uint32(rec[8:12]), order.Uint32(rec[12:16])
		if inclLen > maxPcapRecord {
			return d.finish(), fmt.Errorf("record %d: length %d exceeds %d, file is corrupt", n, inclLen, maxPcapRecord)
		}
		frame := make([]byte, inclLen)
		if _, err := io.ReadFull(r, frame); err != nil {
			return d.finish(), fmt.Errorf("record %d data: %w", n, noEOF(err))
		}
		ts := time.Unix(int64(sec), int64(frac)*1000)
		if nano {
			ts = time.Unix(int64(sec), int64(frac))
		}
		d.frame(ts, link, frame, origLen > inclLen)
	}
}

// noEOF turns a bare io.EOF in the middle of a structure into
// io.ErrUnexpectedEOF, which is what it means there.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func bswap(v uint32) uint32 {
	return v>>24 | (v>>8)&0xff00 | (v<<8)&0xff0000 | v<<24
}

// decoder turns link-layer frames into Packets and reassembles fragments.
type decoder struct {
	pkts  []Packet
	frags map[fragKey]*fragGroup
}

type fragKey struct {
	src, dst netip.Addr
	proto    uint8
	id       uint32
}

type fragGroup struct {
	pieces    []fragPiece
	truncated bool
	last      time.Time
}

type fragPiece struct {
	off  int
	data []byte
	more bool
}

func newDecoder() *decoder {
	return &decoder{frags: make(map[fragKey]*fragGroup)}
}

// frame decodes one captured frame; truncated means the capture cut it.
// Frames that are not IP, or too short to hold their headers, are skipped:
// a capture file is not a place to be strict.
func (d *decoder) frame(ts time.Time, link uint32, b []byte, truncated bool) {
	var ip []byte
	switch link {
	case linkEthernet:
		if len(b) < 14 {
			return
		}
		et, off := binary.BigEndian.Uint16(b[12:14]), 14
		for (et == etherTypeVLAN || et == etherTypeQinQ) && len(b) >= off+4 {
			et, off = binary.BigEndian.Uint16(b[off+2:off+4]), off+4
		}
		if et != etherTypeIPv4 && et != etherTypeIPv6 {
			return
		}
		ip = b[off:]
	case linkLinuxSLL:
		if len(b) < 16 {
			return
		}
		if et := binary.BigEndian.Uint16(b[14:16]); et != etherTypeIPv4 && et != etherTypeIPv6 {
			return
		}
		ip = b[16:]
	case linkLinuxSLL2:
		if len(b) < 20 {
			return
		}
		if et := binary.BigEndian.Uint16(b[0:2]); et != etherTypeIPv4 && et != etherTypeIPv6 {
			return
		}
		ip = b[20:]
	case linkRaw, linkIPv4, linkIPv6:
		ip = b
	}
	if len(ip) == 0 {
		return
	}
	switch ip[0] >> 4 {
	case 4:
		d.ipv4(ts, ip, truncated)
	case 6:
		d.ipv6(ts, ip, truncated)
	}
}

func (d *decoder) ipv4(ts time.Time, b []byte, truncated bool) {
	if len(b) < 20 {
		return
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || len(b) < ihl || total < ihl {
		return
	}
	if total <= len(b) {
		b = b[:total] // drop Ethernet padding
	} else {
		truncated = true
	}
	src, _ := netip.AddrFromSlice(b[12:16])
	dst, _ := netip.AddrFromSlice(b[16:20])
	proto := b[9]
	flags := binary.BigEndian.Uint16(b[6:8])
	more, off := flags&0x2000 != 0, int(flags&0x1fff)*8
	if more || off > 0 {
		id := uint32(binary.BigEndian.Uint16(b[4:6]))
		d.fragment(ts, fragKey{src, dst, proto, id}, fragPiece{off, b[ihl:], more}, truncated)
		return
	}
	d.transport(ts, src, dst, proto, b[ihl:], truncated)
}

func (d *decoder) ipv6(ts time.Time, b []byte, truncated bool) {
	if len(b) < 40 {
		return
	}
	end := 40 + int(binary.BigEndian.Uint16(b[4:6]))
	if end <= len(b) {
		b = b[:end]
	} else {
		truncated = true
	}
	src, _ := netip.AddrFromSlice(b[8:24])
	dst, _ := netip.AddrFromSlice(b[24:40])
	next, rest := b[6], b[40:]
	for range maxIPv6Headers {
		switch next {
		case ipv6HopByHop, ipv6Routing, ipv6DestOptions, ipv6AuthHeader:
			if len(rest) < 2 {
				return
			}
			n := (int(rest[1]) + 1) * 8
			if next == ipv6AuthHeader {
				n = (int(rest[1]) + 2) * 4
			}
			if len(rest) < n {
				return
			}
			next, rest = rest[0], rest[n:]
		case ipv6Fragment:
			if len(rest) < 8 {
				return
			}
			field := binary.BigEndian.Uint16(rest[2:4])
			key := fragKey{src, dst, rest[0], binary.BigEndian.Uint32(rest[4:8])}
			d.fragment(ts, key, fragPiece{int(field &^ 7), rest[8:], field&1 != 0}, truncated)
			return
		default:
			d.transport(ts, src, dst, next, rest, truncated)
			return
		}
	}
}

// fragment files one fragment and emits the packet once every byte from
// offset zero up to the last fragment has been seen (RFC 791, RFC 8200 §4.5).
func (d *decoder) fragment(ts time.Time, key fragKey, p fragPiece, truncated bool) {
	g := d.frags[key]
	if g == nil {
		g = &fragGroup{}
		d.frags[key] = g
	}
	g.pieces = append(g.pieces, p)
	g.truncated = g.truncated || truncated
	g.last = ts
	buf, complete := g.assemble()
	if !complete {
		return
	}
	delete(d.frags, key)
	d.transport(ts, key.src, key.dst, key.proto, buf, g.truncated)
}

// assemble lays the pieces out at their offsets. It reports whether they
// cover the whole packet without a gap.
func (g *fragGroup) assemble() ([]byte, bool) {
	slices.SortFunc(g.pieces, func(a, b fragPiece) int { return a.off - b.off })
	covered, total, size := 0, -1, 0
	gap := false
	for _, p := range g.pieces {
		if p.off > covered {
			gap = true
		}
		end := p.off + len(p.data)
		covered = max(covered, end)
		size = max(size, end)
		if !p.more {
			total = end
		}
	}
	buf := make([]byte, size)
	for _, p := range g.pieces {
		copy(buf[p.off:], p.data)
	}
	return buf, !gap && total >= 0 && covered >= total
}

// transport splits off the UDP or TCP header and appends the Packet.
func (d *decoder) transport(ts time.Time, src, dst netip.Addr, proto uint8, b []byte, incomplete bool) {
	pkt := Packet{
		Time:       ts,
		Proto:      proto,
		Src:        netip.AddrPortFrom(src, 0),
		Dst:        netip.AddrPortFrom(dst, 0),
		Payload:    b,
		Incomplete: incomplete,
	}
	switch proto {
	case ProtoUDP:
		if len(b) < 8 {
			pkt.Incomplete = true
			break
		}
		pkt.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:2]))
		pkt.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:4]))
		n := int(binary.BigEndian.Uint16(b[4:6]))
		switch {
		case n >= 8 && n <= len(b):
			pkt.Payload = b[8:n]
		default:
			pkt.Payload = b[8:]
			pkt.Incomplete = pkt.Incomplete || n > len(b)
		}
	case ProtoTCP:
		if len(b) < 20 || len(b) < int(b[12]>>4)*4 {
			pkt.Incomplete = true
			break
		}
		pkt.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:2]))
		pkt.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:4]))
		pkt.Payload = b[int(b[12]>>4)*4:]
	}
	d.pkts = append(d.pkts, pkt)
}

// finish returns the packets, followed by those whose fragments never all
// arrived, so a search of the payloads still sees every captured byte.
func (d *decoder) finish() []Packet {
	keys := make([]fragKey, 0, len(d.frags))
	for k := range d.frags {
		keys = append(keys, k)
	}
	// Deterministic order: by the time of the last fragment seen.
	slices.SortFunc(keys, func(a, b fragKey) int { return d.frags[a].last.Compare(d.frags[b].last) })
	for _, k := range keys {
		g := d.frags[k]
		buf, _ := g.assemble()
		if g.pieces[0].off == 0 {
			d.transport(g.last, k.src, k.dst, k.proto, buf, true)
			continue
		}
		// Without the first fragment there is no transport header to read.
		d.pkts = append(d.pkts, Packet{
			Time:       g.last,
			Proto:      k.proto,
			Src:        netip.AddrPortFrom(k.src, 0),
			Dst:        netip.AddrPortFrom(k.dst, 0),
			Payload:    buf,
			Incomplete: true,
		})
	}
	clear(d.frags)
	return d.pkts
}
