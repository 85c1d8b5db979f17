//go:build !unix

package jobs

// diskFree reports that free space is unknown on systems without statfs; uploads are then
// bounded only by the upload size limit.
func diskFree(string) (int64, bool, error) { return 0, false, nil }
