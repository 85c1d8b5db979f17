//go:build linux

package sandbox

import (
	"fmt"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// scratchAccess is all a child may do in its scratch directory: create regular files there,
// read, write and truncate the files it created, and remove them. Not listing the directory,
// making directories, links, symbolic links or special files, nor moving anything in or out.
const scratchAccess = llsys.AccessFSMakeReg | llsys.AccessFSWriteFile | llsys.AccessFSReadFile |
	llsys.AccessFSTruncate | llsys.AccessFSRemoveFile

// restrictFiles confines the child's file system with Landlock, on every thread: it may open no
// path at all but files it creates in scratch (when set: a new, empty directory the parent made
// for this child alone and removes after it), and reads and writes only through the
// descriptors it was given. On kernels whose Landlock covers them, TCP bind and connect,
// abstract UNIX sockets and signals to other processes are denied too. It returns "abi N" for
// the Landlock ABI the kernel offers, or "unsupported: why" when it has none.
func restrictFiles(scratch string) (string, error) {
	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		return fmt.Sprintf("unsupported: %v", err), nil
	}
	var rules []landlock.Rule
	if scratch != "" {
		rules = append(rules, landlock.PathAccess(scratchAccess, scratch))
	}
	if err := landlock.V6.BestEffort().Restrict(rules...); err != nil {
		return "", err
	}
	return fmt.Sprintf("abi %d", abi), nil
}
