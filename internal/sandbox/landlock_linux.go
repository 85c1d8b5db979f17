//go:build linux

package sandbox

import (
	"fmt"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// outputDirAccess is what a conversion needs in its output's directory (and verify in its
// scratch directory): create the temporary output and any scratch files (both read back through the descriptors it opens), rename the
// output into place, remove what it leaves behind on failure, and open the directory to sync
// the rename.
const outputDirAccess = llsys.AccessFSMakeReg | llsys.AccessFSWriteFile | llsys.AccessFSReadFile |
	llsys.AccessFSRemoveFile | llsys.AccessFSReadDir

// restrictFiles confines the child's file system with Landlock, on every thread: it may read
// the files in reads and work in the directories in dirs, and do nothing else anywhere (no
// other reads, writes or executions). On kernels whose Landlock covers them, TCP bind and
// connect, abstract UNIX sockets and signals to other processes are denied too. It returns
// "abi N" for the Landlock ABI the kernel offers, or "unsupported: why" when it has none.
func restrictFiles(reads, dirs []string) (string, error) {
	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		return fmt.Sprintf("unsupported: %v", err), nil
	}
	// A missing file or directory is reported by the operation's own open, as without
	// Landlock.
	var rules []landlock.Rule
	for _, f := range reads {
		rules = append(rules, landlock.PathAccess(llsys.AccessFSReadFile, f).IgnoreIfMissing())
	}
	for _, d := range dirs {
		rules = append(rules, landlock.PathAccess(outputDirAccess, d).IgnoreIfMissing())
	}
	if err := landlock.V6.BestEffort().Restrict(rules...); err != nil {
		return "", err
	}
	return fmt.Sprintf("abi %d", abi), nil
}
