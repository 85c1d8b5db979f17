//go:build !unix

package jobs

import (
	"fmt"
	"os"
)

// lockDir only opens the lock file on systems without flock; running two servers on one data
// directory there is not detected.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	return f, nil
}
