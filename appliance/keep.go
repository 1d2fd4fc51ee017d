package appliance

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/edgesbc/edgesbc/media"
	"github.com/edgesbc/edgesbc/sbc"
)

// keepInterval is how often the call store is brought up to date: a crash
// loses at most the changes of this long.
const keepInterval = time.Second

// restoreCalls takes over the calls a previous run left in store: media
// first (ports, remotes, kernel flows), then signaling. A call whose media
// or dialogs cannot be restored is dropped (its kernel flows are pruned
// after), the others go on.
func restoreCalls(store *CallStore, relay *media.Relay, srv *sbc.Server, log hclog.Logger) {
	kept, problems, err := store.Load()
	if err != nil {
		log.Error("read call store: no call restored", "path", store.Path(), "error", err)
		return
	}
	for _, p := range problems {
		log.Warn("call store damaged: skipped", "path", store.Path(), "problem", p)
	}
	restored := 0
	for _, k := range kept {
		if err := relay.Restore(k.Media); err != nil {
			log.Warn("restore call media: call dropped", "call", k.Call.ID, "error", err)
			relay.Close(k.Media.ID, "restore failed")
			continue
		}
		if err := srv.Restore(k.Call); err != nil {
			log.Warn("restore call: dropped", "call", k.Call.ID, "error", err)
			relay.Close(k.Media.ID, "restore failed")
			continue
		}
		restored++
	}
	if len(kept) > 0 || len(problems) > 0 {
		log.Info("calls of the previous run restored", "restored", restored, "in_store", len(kept), "damaged", len(problems))
	}
}

// callKeeper writes the confirmed calls to the call store every
// keepInterval while they change.
type callKeeper struct {
	store *CallStore
	relay *media.Relay
	srv   *sbc.Server
	log   hclog.Logger
	quit  chan struct{}
	done  chan int
	last  []byte // what was written, counters left out
}

func startKeeper(store *CallStore, relay *media.Relay, srv *sbc.Server, log hclog.Logger) *callKeeper {
	k := &callKeeper{store: store, relay: relay, srv: srv, log: log, quit: make(chan struct{}), done: make(chan int, 1)}
	go k.run()
	return k
}

// stop writes the store a last time and returns how many calls it holds.
func (k *callKeeper) stop() int {
	close(k.quit)
	return <-k.done
}

func (k *callKeeper) run() {
	t := time.NewTicker(keepInterval)
	defer t.Stop()
	for {
		select {
		case <-k.quit:
			k.done <- k.save(true)
			return
		case <-t.C:
			k.save(false)
		}
	}
}

// save writes the store when the calls changed in anything but their
// counters (those change with every packet; they are written with the
// next real change, and always at stop) and returns how many calls there
// are.
func (k *callKeeper) save(force bool) int {
	var calls []keptCall
	for _, c := range k.srv.CallStates() {
		m, ok := k.relay.State(media.SessionID(c.ID))
		if !ok {
			continue
		}
		calls = append(calls, keptCall{Call: c, Media: m})
	}
	shape := shapeOf(calls)
	if !force && bytes.Equal(shape, k.last) {
		return len(calls)
	}
	if err := k.store.Save(calls, time.Now()); err != nil {
		k.log.Error("save call store", "error", err)
		return len(calls)
	}
	k.last = shape
	return len(calls)
}

// shapeOf is the calls' state without their media counters, to tell
// whether anything worth writing changed.
func shapeOf(calls []keptCall) []byte {
	trimmed := make([]keptCall, len(calls))
	for i, c := range calls {
		c.Media.Streams = append([]media.StreamState(nil), c.Media.Streams...)
		for j := range c.Media.Streams {
			c.Media.Streams[j].Counted = [2][2]media.FlowStats{}
			c.Media.Streams[j].KernelBase = [2][2]media.Counter{}
		}
		trimmed[i] = c
	}
	b, _ := json.Marshal(trimmed)
	return b
}
