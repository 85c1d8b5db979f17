package batch

import "github.com/ptsafe/converter/internal/s3store"

// An S3 DEST takes outputs with their parts' digests.
var _ partPutter = (*s3store.Tree)(nil)
