# edgesbc — thin targets; each line is something you can type by hand.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin/edgesbc

.PHONY: all deps build demo test test-unit test-integration fuzz bench bench-go bench-security image image-test lint vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/edgesbc

# Runs the daemon on examples/edgesbc.hcl inside throw-away network namespaces
# and places a call each way through it with sipp (needs root).
demo: deps build
	bash scripts/demo.sh

# The whole suite: unit tests, short fuzz runs and, as root, the integration
# tests with real sipp and network namespaces, then the appliance image
# booted in qemu (make image-test).
test: deps
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...
	@if [ "$$(id -u)" -eq 0 ]; then $(MAKE) image-test; else echo "image-test skipped: needs root (sudo make image-test)"; fi

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
	$(GO) test -run '^$$' -fuzz '^FuzzAnswerFits$$' -fuzztime $(FUZZTIME) ./sbc
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./media/sdp
	$(GO) test -run '^$$' -fuzz '^FuzzRewrite$$' -fuzztime $(FUZZTIME) ./media/sdp
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./appliance/config
	$(GO) test -run '^$$' -fuzz '^FuzzReadBans$$' -fuzztime $(FUZZTIME) ./appliance

# Bootable UEFI disk image of the appliance in images/out/ (needs root).
# Options: IMAGE_FLAGS='--config FILE --size 2G ...', see scripts/build-image.sh --help.
image:
	bash scripts/deps.sh image
	VERSION=$(VERSION) bash scripts/build-image.sh $(IMAGE_FLAGS)

# Boots the image in qemu inside a private network namespace and checks that
# it reports ready and answers SIP on both zones (needs root).
image-test: image
	bash scripts/boot-test.sh

bench:
	bash scripts/deps.sh bench
	$(MAKE) bench-go
	bash bench/run.sh
	bash bench/media-kernel.sh
	GO=$(GO) bash bench/security.sh

# In-process benchmarks of one whole call through the server (raw UDP peers
# on loopback) and of a media session's lifecycle: ns, CPU ns and
# allocations per operation, quicker to compare than bench/run.sh.
bench-go:
	$(GO) test -run '^$$' -bench 'BenchmarkCall$$|SessionLifecycle|RelayForward' -benchtime 2000x ./sbc ./media

# The security part of make bench alone (as root): the highest call rate
# with zero failed calls, without and with a 20,000 packets/s flood from 50
# attacker addresses; see bench/README.md.
bench-security: deps
	GO=$(GO) bash bench/security.sh

lint vet:
	$(GO) vet ./...
	GOOS=darwin $(GO) vet ./...

clean:
	rm -rf bin images/out

deps:
	bash scripts/deps.sh
