// Package buildinfo reports which converter made a file, from the module version and VCS
// revision the Go toolchain records in every binary, so that no release step has to remember
// to set a version at link time.
package buildinfo

import "runtime/debug"

// Version returns the main module's version and, when the binary was built in a VCS checkout,
// the revision: "v1.2.0 (1a2b...)", "v0.0.0-20261130095118-d775796abcde+dirty (d775796a..., modified)",
// or "(devel)" for a build without either (go run, go test, -buildvcs=false).
func Version() string {
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
