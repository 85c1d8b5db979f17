package convert

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"

	"github.com/ptsafe/converter/internal/fault"
)

// MinHashPartSize is the smallest Options.PartSize: it bounds the part digests a manifest holds
// to one per MiB of output (S3's own smallest part is 5 MiB).
const MinHashPartSize = 1 << 20

// partHasher takes the SHA-256 of each consecutive size bytes written to it, the last part
// shorter: the digests an upload in parts of that size sends as its checksums.
type partHasher struct {
	size int64
	h    hash.Hash
	n    int64 // bytes of the current part hashed so far
	sums []string
}

func newPartHasher(size int64) (*partHasher, error) {
	if size < MinHashPartSize {
		return nil, fault.New(fault.Internal, "", "part size %d is below the minimum of %d", size, MinHashPartSize)
	}
	return &partHasher{size: size, h: sha256.New()}, nil
}

func (p *partHasher) write(b []byte) {
	for len(b) > 0 {
		take := min(int64(len(b)), p.size-p.n)
		p.h.Write(b[:take])
		b, p.n = b[take:], p.n+take
		if p.n == p.size {
			p.next()
		}
	}
}

// next ends the current part.
func (p *partHasher) next() {
	p.sums = append(p.sums, hex.EncodeToString(p.h.Sum(nil)))
	p.h.Reset()
	p.n = 0
}

// finish returns the parts' digests: a file that ends between parts has no empty last part,
// but an empty file is one empty part.
func (p *partHasher) finish() []string {
	if p.n > 0 || len(p.sums) == 0 {
		p.next()
	}
	return p.sums
}
