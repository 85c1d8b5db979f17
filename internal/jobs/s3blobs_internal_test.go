package jobs

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"testing"

	"github.com/ptsafe/converter/internal/s3store"
)

// TestMismatch: what a stored object must show to be served as a job's file.
func TestMismatch(t *testing.T) {
	t.Parallel()
	sum := sha256.Sum256([]byte("output"))
	sha := hex.EncodeToString(sum[:])
	checksum := base64.StdEncoding.EncodeToString(sum[:])
	other := base64.StdEncoding.EncodeToString(make([]byte, 32))
	for _, tc := range []struct {
		name string
		info s3store.Info
		size int64
		ok   bool
	}{
		{"put in one request", s3store.Info{Size: 6, SHA256: sha, Checksum: checksum}, 6, true},
		{"multipart: composite checksum", s3store.Info{Size: 6, SHA256: sha, Checksum: other + "-2"}, 6, true},
		{"a store keeping no checksum", s3store.Info{Size: 6, SHA256: sha}, 6, true},
		{"size unknown (a manifest)", s3store.Info{Size: 6, SHA256: sha, Checksum: checksum}, -1, true},
		{"other size", s3store.Info{Size: 7, SHA256: sha, Checksum: checksum}, 6, false},
		{"put by another client", s3store.Info{Size: 6, Checksum: checksum}, 6, false},
		{"other digest recorded", s3store.Info{Size: 6, SHA256: hex.EncodeToString(make([]byte, 32)), Checksum: checksum}, 6, false},
		{"bytes not those recorded", s3store.Info{Size: 6, SHA256: sha, Checksum: other}, 6, false},
	} {
		if err := mismatch(tc.info, tc.size, sha); (err == nil) != tc.ok {
			t.Errorf("%s: mismatch = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}
