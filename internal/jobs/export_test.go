package jobs

// SetDiskFree replaces the service's free-space probe, for tests.
func (s *Service) SetDiskFree(f func(dir string) (int64, bool, error)) { s.blobs.free = f }
