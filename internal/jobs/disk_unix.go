//go:build unix

package jobs

import (
	"errors"

	"golang.org/x/sys/unix"
)

// diskFree returns the bytes an unprivileged writer may still use on dir's file system.
func diskFree(dir string) (int64, bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false, err
	}
	return int64(st.Bavail) * int64(st.Bsize), true, nil
}

// diskFull reports whether err says the file system is out of space or quota.
func diskFull(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}
