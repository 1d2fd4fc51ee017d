# edgesbc — thin targets; each line is something you can type by hand.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin/edgesbc

.PHONY: all deps build demo test test-unit test-integration fuzz bench bench-security lint vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/edgesbc

# Runs the daemon on examples/edgesbc.hcl inside throw-away network namespaces
# and places a call each way through it with sipp (needs root).
demo: deps build
	bash scripts/demo.sh

# The whole suite: unit tests, short fuzz runs and, as root, the integration
# tests with real sipp and network namespaces.
test: deps
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

test-unit:
	$(GO) test -race -short ./...

test-integration:
	$(GO) test -race -count=1 -run Integration -timeout 15m ./...

FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzInspect$$' -fuzztime $(FUZZTIME) ./sbc
	$(GO) test -run '^$$' -fuzz '^FuzzServerEntry$$' -fuzztime $(FUZZTIME) ./sbc
	$(GO) test -run '^$$' -fuzz '^FuzzInDialog$$' -fuzztime $(FUZZTIME) ./sbc
	$(GO) test -run '^$$' -fuzz '^FuzzSummarize$$' -fuzztime $(FUZZTIME) ./sbc
	$(GO) test -run '^$$' -fuzz '^FuzzDialogHeaders$$' -fuzztime $(FUZZTIME) ./sbc
	$(GO) test -run '^$$' -fuzz '^FuzzTCPFraming$$' -fuzztime $(FUZZTIME) ./sbc
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./media/sdp
	$(GO) test -run '^$$' -fuzz '^FuzzRewrite$$' -fuzztime $(FUZZTIME) ./media/sdp
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./appliance/config
	$(GO) test -run '^$$' -fuzz '^FuzzReadBans$$' -fuzztime $(FUZZTIME) ./appliance

bench:
	bash scripts/deps.sh bench
	bash bench/run.sh
	bash bench/media-kernel.sh

# Calls at a fixed rate with and without a 20,000 packets/s flood from 50
# attacker addresses (as root); EDGESBC_SECURITY_BENCH_RATE sets the rate.
bench-security: deps
	EDGESBC_SECURITY_BENCH=1 $(GO) test -count=1 -run '^TestIntegrationSecurityFloodBench$$' -v ./cmd/edgesbc

lint vet:
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...

clean:
	rm -rf bin images/out

deps:
	bash scripts/deps.sh
