package guard

import (
	"net/netip"
	"time"
)

// RateLimit is a per-source packet rate limit on one zone's SIP port,
// enforced by the guard when the kernel cannot: a token bucket per source
// that holds Burst packets and refills at Rate per Per.
type RateLimit struct {
	Name string
	Zone string
	Rate int
	// Per is the time Rate packets are allowed in (time.Second,
	// time.Minute or time.Hour).
	Per   time.Duration
	Burst int
}

// limitKey names one bucket: a rate limit and a source (or IPv6 prefix).
type limitKey struct {
	limit int
	src   netip.Addr
}

// bucket is a token bucket as of last: tokens is what it held then.
type bucket struct {
	tokens float64
	last   time.Time
}

// limiter holds the buckets of the rate limits. Guard.mu guards it.
type limiter struct {
	limits  []RateLimit
	byZone  map[string]int // zone → index in limits
	buckets map[limitKey]*bucket
	max     int
	swept   time.Time // last sweep made to find room
}

func newLimiter(limits []RateLimit, maxSources int) limiter {
	l := limiter{byZone: map[string]int{}, buckets: map[limitKey]*bucket{}, max: maxSources}
	for _, rl := range limits {
		if rl.Rate <= 0 || rl.Per <= 0 || rl.Zone == "" {
			continue
		}
		if _, dup := l.byZone[rl.Zone]; dup {
			continue
		}
		rl.Burst = max(rl.Burst, 1)
		l.byZone[rl.Zone] = len(l.limits)
		l.limits = append(l.limits, rl)
	}
	return l
}

// refill is the bucket's content at now, at most the burst.
func (rl *RateLimit) refill(b *bucket, now time.Time) float64 {
	el := now.Sub(b.last)
	if el <= 0 {
		return b.tokens
	}
	return min(b.tokens+float64(rl.Rate)*float64(el)/float64(rl.Per), float64(rl.Burst))
}

// over takes one packet from src's bucket of zone's limit and reports
// whether the bucket was empty, with the limit's name.
func (l *limiter) over(now time.Time, zone string, src netip.Addr) (string, bool) {
	i, ok := l.byZone[zone]
	if !ok {
		return "", false
	}
	rl := &l.limits[i]
	k := limitKey{i, src}
	b, ok := l.buckets[k]
	if !ok {
		if len(l.buckets) >= l.max {
			l.evict(now)
		}
		b = &bucket{tokens: float64(rl.Burst), last: now}
		l.buckets[k] = b
	}
	b.tokens, b.last = rl.refill(b, now), now
	if b.tokens < 1 {
		return rl.Name, true
	}
	b.tokens--
	return rl.Name, false
}

// evict makes room for a new bucket. A bucket that has refilled to its
// burst is the same as a new one, so forgetting it loses nothing; when none
// has (a flood from many sources at once), a sixteenth of the table goes,
// picked by map order. The table is scanned for full buckets at most once
// a second, so a flood of new sources costs no scan per packet.
func (l *limiter) evict(now time.Time) {
	if now.Sub(l.swept) >= time.Second {
		l.swept = now
		l.sweep(now)
		if len(l.buckets) < l.max {
			return
		}
	}
	n := max(l.max/16, 1)
	for k := range l.buckets {
		if n == 0 {
			return
		}
		delete(l.buckets, k)
		n--
	}
}

// sweep forgets the buckets that are full again: idle sources.
func (l *limiter) sweep(now time.Time) {
	for k, b := range l.buckets {
		rl := &l.limits[k.limit]
		if rl.refill(b, now) >= float64(rl.Burst) {
			delete(l.buckets, k)
		}
	}
}
