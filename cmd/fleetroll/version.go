package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
)

// version and revision are stamped at build time (make build, make release):
//
//	-ldflags "-X main.version=v0.1.0 -X main.revision=1a2b3c4d5e6f"
//
// A plain go build leaves them as they are here; the build's own record
// (the module version of a go install, the VCS stamp of a build in a
// checkout) then stands in.
var (
	version  = "dev"
	revision = ""
)

// build is what this binary is: version, revision (a short commit, with
// -dirty for a build of a modified tree) and the Go that built it.
type build struct {
	Version, Revision, Go string
}

func (b build) String() string {
	return fmt.Sprintf("fleetroll %s (revision %s, %s)", b.Version, b.Revision, b.Go)
}

var thisBuild = sync.OnceValue(func() build {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return resolveBuild(version, revision, runtime.Version(), bi)
})

// revisionLen is the length of a short revision: 12 hex digits, as the
// -ldflags stamp of the Makefile and Go's pseudo-versions have it.
const revisionLen = 12

// resolveBuild chooses between the stamp given with -ldflags and the build
// record of the toolchain: a stamp wins; without one, the module's version
// (a go install of a tag) and the VCS revision, "-dirty" when modified.
func resolveBuild(stampedVersion, stampedRevision, goVersion string, bi *debug.BuildInfo) build {
	b := build{Version: stampedVersion, Revision: stampedRevision, Go: goVersion}
	if bi == nil {
		if b.Version == "" {
			b.Version = "dev"
		}
		if b.Revision == "" {
			b.Revision = "unknown"
		}
		return b
	}
	if (b.Version == "" || b.Version == "dev") && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		b.Version = bi.Main.Version
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	if b.Revision == "" {
		var rev string
		var modified bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		switch {
		case rev == "":
			b.Revision = "unknown"
		default:
			if len(rev) > revisionLen {
				rev = rev[:revisionLen]
			}
			if modified {
				rev += "-dirty"
			}
			b.Revision = rev
		}
	}
	return b
}
