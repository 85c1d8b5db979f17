//go:build !linux

package sandbox

import (
	"os"
	"os/exec"
	"runtime"

	"github.com/ptsafe/converter/internal/fault"
)

func setRlimits(rlimits) (bool, error) { return false, nil }

func installSeccomp() (Status, error) {
	return Status{Seccomp: "unsupported: no seccomp on " + runtime.GOOS}, nil
}

func closeInherited(int) (int, error) { return 0, nil }

func configure(cmd *exec.Cmd) {}

// signalFault classifies a child ended by a signal, where the platform reports one.
func signalFault(ps *os.ProcessState, _ rlimits, stderrLine string) error {
	if ps.Exited() {
		return nil
	}
	return fault.New(fault.Internal, "", "sandbox child crashed: %s %s", ps.String(), stderrLine)
}

func restrictFiles(string) (string, error) {
	return "unsupported: no Landlock on " + runtime.GOOS, nil
}
