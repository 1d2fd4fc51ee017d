package appliance

import (
	"strings"
	"testing"

	"github.com/edgesbc/edgesbc/appliance/config"
	"github.com/edgesbc/edgesbc/sbc"
)

// TestOfferCodecsKnown keeps the codec names the configuration accepts in
// step with the codecs the SBC can offer: a name valid in the file but
// unknown to the SBC would fail every call toward that peer.
func TestOfferCodecsKnown(t *testing.T) {
	for _, name := range config.OfferCodecs {
		if !sbc.KnownCodec(name) {
			t.Errorf("config accepts codec %q, which the SBC cannot offer", name)
		}
	}
	for _, name := range sbc.DefaultCodecs {
		found := false
		for _, c := range config.OfferCodecs {
			found = found || strings.EqualFold(c, name)
		}
		if !found {
			t.Errorf("default codec %q cannot be written in the configuration", name)
		}
	}
}
