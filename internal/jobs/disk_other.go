//go:build !unix

package jobs

import (
	"errors"
	"syscall"
)

// diskFree reports that free space is unknown on systems without statfs; uploads are then
// bounded only by the upload size limit.
func diskFree(string) (int64, bool, error) { return 0, false, nil }

// diskFull reports whether err says the file system is out of space.
func diskFull(err error) bool { return errors.Is(err, syscall.ENOSPC) }
