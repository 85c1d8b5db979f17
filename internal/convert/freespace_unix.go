//go:build unix

package convert

import (
	"os"

	"golang.org/x/sys/unix"
)

// freeBytes returns the bytes an unprivileged writer may still use on f's file system.
func freeBytes(f *os.File) (int64, bool, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return 0, false, err
	}
	return int64(st.Bavail) * int64(st.Bsize), true, nil
}
