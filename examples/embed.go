// Package examples holds the example configuration shipped with edgesbc, so
// the binary can print or run it without a file on disk.
package examples

import _ "embed"

// Default is examples/edgesbc.hcl: the configuration a newcomer reads first
// and the one the demo network namespaces are built for.
//
//go:embed edgesbc.hcl
var Default []byte
