//go:build unix

package jobs

import (
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive, non-blocking lock on path so that only one process serves a data
// directory. That is what makes startup recovery sound: any job the queue shows as running was
// left by a process that no longer exists. The kernel drops the lock when the process dies.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data directory is in use by another process (%s): %w", path, err)
	}
	return f, nil
}
