// Package buildinfo reports which converter made a file, from the module version and VCS
// revision the Go toolchain records in every binary, so that no release step has to remember
// to set a version at link time; only a build without the repository's history (a container
// image's) sets them there.
package buildinfo

import "runtime/debug"

// linkedVersion and linkedRevision, when set at link time, stand in for what the toolchain
// records: a container image is built from a context without .git, so its build passes them,
// as deploy/Dockerfile does:
//
//	-ldflags "-X github.com/ptsafe/converter/internal/buildinfo.linkedVersion=v1.2.0
//	          -X github.com/ptsafe/converter/internal/buildinfo.linkedRevision=1a2b..."
//
// They are never assigned at run time.
var linkedVersion, linkedRevision string

// linked formats a version and revision set at link time as Version does recorded ones.
func linked(version, revision string) string {
	if revision == "" {
		return version
	}
	return version + " (" + revision + ")"
}

// Version returns the main module's version and, when the binary was built in a VCS checkout,
// the revision: "v1.2.0 (1a2b...)", "v0.0.0-20261130095118-d775796abcde+dirty (d775796a..., modified)",
// or "(devel)" for a build without either (go run, go test, -buildvcs=false). A version set at
// link time wins.
func Version() string {
	if linkedVersion != "" {
		return linked(linkedVersion, linkedRevision)
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return format(nil)
	}
	return format(bi)
}

func format(bi *debug.BuildInfo) string {
	if bi == nil {
		return "(devel)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		}
	}
	if rev == "" {
		return v
	}
	return v + " (" + rev + modified + ")"
}
