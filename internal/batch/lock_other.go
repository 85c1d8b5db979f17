//go:build !unix

package batch

import (
	"fmt"
	"os"
)

// lockFile only opens the lock file on systems without flock: two runs on one destination
// are not detected there.
func lockFile(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	return f, nil
}
