//go:build !unix

package convert

import "os"

// freeBytes reports that free space is unknown on systems without statfs; Options.MinFreeBytes
// then cannot be honoured and the conversion is refused.
func freeBytes(*os.File) (int64, bool, error) { return 0, false, nil }
