package app

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Build identifies the running binary: `wxnotify version` prints it and wxnotify_build_info
// exports it.
type Build struct {
	Version   string // a release version, or "devel"
	Revision  string // the VCS revision it was built from, or "unknown"
	GoVersion string // the Go toolchain, runtime.Version()
}

// ReadBuild returns the build of the running binary. version and revision are what the linker
// stamped (`-X main.version=... -X main.revision=...`, as deploy/Dockerfile does); when empty,
// they come from what the Go toolchain recorded (the module version of `go install
// ...@v1.2.3`, the VCS revision of a build in a checkout, with "-dirty" for uncommitted
// changes), else "devel" and "unknown".
func ReadBuild(version, revision string) Build {
	info, _ := debug.ReadBuildInfo()
	return readBuild(version, revision, info)
}

// readBuild is ReadBuild with the toolchain's record given (nil: none).
func readBuild(version, revision string, info *debug.BuildInfo) Build {
	b := Build{Version: version, Revision: revision, GoVersion: runtime.Version()}
	if info != nil {
		if b.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
		if b.Revision == "" {
			var rev, dirty string
			for _, s := range info.Settings {
				switch {
				case s.Key == "vcs.revision":
					rev = s.Value
				case s.Key == "vcs.modified" && s.Value == "true":
					dirty = "-dirty"
				}
			}
			if rev != "" {
				b.Revision = rev + dirty
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Revision == "" {
		b.Revision = "unknown"
	}
	return b
}

// String formats the build as `wxnotify version` prints it.
func (b Build) String() string {
	return "wxnotify " + b.Version + " (revision " + b.Revision + ", " + b.GoVersion + " " + runtime.GOOS + "/" + runtime.GOARCH + ")"
}

// registerBuildInfo exports b as wxnotify_build_info{version,revision,goversion} 1, the
// convention for joining a version onto other series (and for counting processes per version).
func registerBuildInfo(reg prometheus.Registerer, b Build) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "wxnotify_build_info",
		Help:        "Always 1; the labels identify the running binary.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	}, func() float64 { return 1 }))
}
