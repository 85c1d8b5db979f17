package batch

import "github.com/ptsafe/converter/internal/s3store"

// An S3 DEST takes outputs with the digests the conversion took.
var _ filePutter = (*s3store.Tree)(nil)
