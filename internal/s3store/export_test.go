package s3store

import "github.com/aws/aws-sdk-go-v2/service/s3"

// SetPageSize makes Walk list n keys a request, so that a test covers several pages cheaply.
func SetPageSize(t *Tree, n int32) { t.pageSize = n }

// Client returns the tree's S3 client, for tests that act as another client (a killed run, a
// store's own checks).
func Client(t *Tree) *s3.Client { return t.client }

// Bucket returns the tree's bucket.
func Bucket(t *Tree) string { return t.bucket }

// UnsignedPayload is the request option Put sends its uploads with.
var UnsignedPayload = unsignedPayload

// SetSingleMax makes PutFile send objects larger than n bytes as multipart uploads, so that a
// test covers them without gigabytes.
func SetSingleMax(t *Tree, n int64) { t.singleMax = n }
