package testenv

import "testing"

// Captured from a namespace running sipp -p 5060 -rtp_echo.
const procNetUDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
 9753: 0200630A:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13027 2 00000000da5d3f47 0         
10693: 0200630A:1770 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13028 2 0000000082f99baa 0         
13581: 00000000:22B8 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 13030 2 00000000a571151e 0         
`

const procNetUDP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  111: 00000000000000000000000000000000:4E20 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 23456 2 0000000000000000 0
`

func TestUDPPortBound(t *testing.T) {
	for _, tt := range []struct {
		text string
		port uint16
		want bool
	}{
		{procNetUDP, 5060, true},
		{procNetUDP, 6000, true},
		{procNetUDP, 8888, true},
		{procNetUDP, 6002, false},
		{procNetUDP6, 20000, true},
		{procNetUDP + procNetUDP6, 20000, true},
		{procNetUDP6, 5060, false},
		{"", 5060, false},
		{"garbage\n 1: nocolon 0\n 2: 00000000:ZZZZ x\n", 5060, false},
	} {
		if got := udpPortBound(tt.text, tt.port); got != tt.want {
			t.Errorf("udpPortBound(port %d) = %v, want %v", tt.port, got, tt.want)
		}
	}
}

// Captured from a namespace running sipp -t t1 -p 5060 with one call up.
const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0200710B:13C4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0200710B:13C4 010071CB:9C41 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 20 4 30 10 -1
   2: 0200710B:A411 010071CB:13C4 01 00000000:00000000 00:00000000 00000000     0        0 31339 1 0000000000000000 20 4 30 10 -1
`

func TestTCPPortListening(t *testing.T) {
	for _, tt := range []struct {
		port uint16
		want bool
	}{
		{5060, true},
		{0xA411, false}, // connected, not listening
		{6000, false},
	} {
		if got := tcpPortListening(procNetTCP, tt.port); got != tt.want {
			t.Errorf("tcpPortListening(%d) = %v, want %v", tt.port, got, tt.want)
		}
	}
	if tcpPortListening("garbage\n 1: x 0A\n", 5060) {
		t.Error("garbage read as a listener")
	}
}
