//go:build !linux

package appliance

import (
	"context"
	"errors"

	"github.com/hashicorp/go-hclog"
)

// ErrNetworkUnsupported is returned where the appliance cannot configure
// network interfaces itself.
var ErrNetworkUnsupported = errors.New("appliance: configuring network interfaces (zone device) is supported on Linux only")

// SetupNetwork is available on Linux only.
func SetupNetwork(context.Context, NetworkPlan, NetworkOptions, hclog.Logger) error {
	return ErrNetworkUnsupported
}
