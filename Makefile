# The two commands of the README:
#   make demo   start the local real fleet cluster, roll the demo service, deploy a release
#   make test   every test: static checks, unit tests, real-cluster tests
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The commit, short, with -dirty for a modified tree (as fleetroll version
# reads it from a plain go build).
REVISION ?= $(shell r=$$(git rev-parse --short=12 HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null || r=$$r-dirty; echo $$r; } || echo unknown)
LDFLAGS = -X main.version=$(VERSION) -X main.revision=$(REVISION)

.PHONY: demo test check unit e2e fuzz fuzz-long build man release bench bench-roll bench-prepull bench-watch bench-batch bench-hostile bench-detect screenshot cluster-down

demo:
	contrib/demo.sh

test: check unit fuzz e2e

check:
	contrib/cluster/deps.sh
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd contrib/cluster/fleetd && $(GO) vet .
	$(GO) mod tidy -e -diff 2>/dev/null

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

# Each fuzz target for a bounded number of executions (seeded with
# hook/testdata). A count, not a duration: Go 1.26's fuzz coordinator can
# fail a target with a bare "context deadline exceeded" when a -fuzztime
# duration ends while a worker is mid-call (golang/go#75804, fixed in Go
# 1.27); a count has no deadline to race. -timeout still ends a hang.
FUZZTIME ?= 50000x
fuzz:
	@for f in $$($(GO) test -list '^Fuzz' ./hook/ | grep '^Fuzz'); do \
		echo "fuzz $$f for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -timeout 5m ./hook/ || exit 1; \
	done

# Each fuzz target to a million executions (not in CI): the last "execs"
# line of each target is its count; a crash fails the target and leaves its
# input under hook/testdata/fuzz.
fuzz-long:
	$(MAKE) fuzz FUZZTIME=1000000x

# The real-cluster suite, in its lanes (docs/testing.md); it prints where
# its time went at the end.
e2e:
	$(GO) test -count=1 -timeout 30m -v ./e2e/

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/fleetroll ./cmd/fleetroll

# The manual page, from the commands and flags themselves: man ./fleetroll.1
man:
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/fleetroll man > fleetroll.1.tmp && mv fleetroll.1.tmp fleetroll.1

# A release into dist/ (docs/releasing.md): static binaries for linux/amd64
# and linux/arm64, a multi-platform OCI image of them (made without a
# container engine or a base image), SHA256SUMS, and the manual page; every
# one stamped with VERSION and REVISION.
release: man
	rm -rf dist
	$(GO) run ./contrib/release -version "$(VERSION)" -revision "$(REVISION)" -out dist
	cp fleetroll.1 dist/fleetroll.1
	cd dist && sha256sum fleetroll.1 >> SHA256SUMS

bench:
	bench/roll.sh
	bench/nudge.sh
	bench/hook.sh
	bench/load.sh
	bench/prepull.sh
	bench/watch.sh
	bench/batch.sh
	bench/hostile.sh
	bench/detect.sh

# fleet's stop and start phases over 20 rolls of 3 instances at grace 0, on
# one machine and on three: p50, p99, max, the slow ones diagnosed; each
# goal printed (about 15 minutes).
bench-roll:
	bench/roll.sh

# Pre-pull against each instance pulling, 50 MB and 300 MB images, three
# machines (about 10 minutes).
bench-prepull:
	bench/prepull.sh

# Detection lag with etcd watches and by polling alone, 10 interleaved
# rounds on the demo cluster (about 5 minutes).
bench-watch:
	bench/watch.sh

# Rolls in batches: N = 3, 10, 30 instances, --max-unavailable 1 and 10
# (about 10 minutes on one machine).
bench-batch:
	bench/batch.sh

# serve under hostile load: a flood of pushes, fat fields, event streams,
# wrong logins, then an honest push; each goal printed (about 2 minutes).
bench-hostile:
	bench/hostile.sh

# A release whose instances crash 3 s and 15 s after their start, deployed
# with --on-failure rollback and a minimum healthy time of 20 s, on one
# machine and on three: the crash seen, every instance back, how many ran
# it; each goal printed (under 6 minutes).
bench-detect:
	bench/detect.sh

# The status page's picture in docs/, taken by its browser test.
screenshot:
	FLEETROLL_SCREENSHOT=$(CURDIR)/docs/status-page.png $(GO) test -count=1 -run TestStatusPageInABrowser -v ./e2e/

cluster-down:
	contrib/cluster/cluster.sh down
