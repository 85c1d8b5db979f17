package jobs

// SetDiskFree replaces the free-space probe for a test and returns the function that restores
// it.
func SetDiskFree(f func(dir string) (int64, bool, error)) (restore func()) {
	old := freeSpace
	freeSpace = f
	return func() { freeSpace = old }
}
