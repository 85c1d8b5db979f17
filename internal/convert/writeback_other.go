//go:build !linux

package convert

import "os"

// startWriteback is a no-op where sync_file_range does not exist; the final fsync does the work.
func startWriteback(f *os.File, off, n int64) {}
