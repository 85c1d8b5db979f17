// Package s3store is the store.Tree of the objects under an S3 prefix (s3://bucket/prefix), on
// AWS or on any S3-compatible store (versitygw, MinIO, Ceph, ...).
//
// It must never expose a partial object at a name, nor hold a whole object in memory: Put sends
// an object of at most one part in one PutObject request, and a larger one as a multipart upload
// that is completed only after every part was acknowledged with its SHA-256 checksum and the
// whole content matched the SHA-256 the caller expects; a failed upload is aborted. A run killed
// mid-upload leaves an incomplete multipart upload, invisible at the name, which AbortIncomplete
// removes at the next run.
//
// Dependencies (one line each):
//   - github.com/aws/aws-sdk-go-v2 (config, credentials, service/s3): AWS's maintained SDK; its
//     config package resolves the standard credential chain (environment, shared config and
//     profiles, SSO, IMDS) and AWS_ENDPOINT_URL, which we would otherwise reimplement badly.
//   - github.com/aws/smithy-go: the SDK's error type (APIError codes such as NoSuchKey), already
//     required by the SDK.
//   - github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager (v0.5.7, bench/s3put only): the
//     SDK's own tree upload, the baseline the local-to-S3 benchmark compares Put with.
//
// Uploads are signed with an UNSIGNED-PAYLOAD payload hash: their x-amz-checksum-sha256
// header is signed, and the store checks the body against it, so SigV4's own payload hash
// would only be one more SHA-256 of every byte, on this side and on the store's. PutFile takes
// the digests from a caller that hashed the bytes as it wrote them (a conversion into a
// staging copy), and hashes nothing: the file goes in one request (up to 5 GiB) with the
// caller's SHA-256 of the whole, or in parts each with the caller's digest; the store refuses
// bytes that differ (BadDigest) and echoes the checksum it checked, and a multipart upload is
// completed only after every part was confirmed. So the object stored is exactly the bytes the
// caller hashed, which is what reading the copy back and hashing it here would prove, one pass
// cheaper; a file in one request needs no part digests, no part buffers and no assembly by the
// store. (A store that echoes no checksum in one request's answer checked nothing: the file is
// hashed here after all, and the object removed if it differs.)
//
// Multipart uploads are written here rather than through the SDK's transfer manager because
// the manager completes an upload as soon as its parts are sent: it cannot refuse to complete
// when the whole content's SHA-256 differs from the expected one, so a wrong object would
// appear at the name. Doing it by hand costs one bounded buffer per part in flight.
package s3store
