//go:build !linux

package atomicfile

func renameNoReplace(tmp, dst string) error { return linkNoReplace(tmp, dst) }
