package s3store

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestStoredMismatch(t *testing.T) {
	t.Parallel()
	const sum = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
	for _, tc := range []struct {
		name     string
		size     int64
		checksum *string
		ok       bool
	}{
		{"the object put", 5, aws.String(sum), true},
		{"a store that keeps no checksums", 5, nil, true},
		{"a truncated object", 4, aws.String(sum), false},
		{"other bytes", 5, aws.String("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="), false},
		{"a multipart object where one part was put", 5, aws.String(sum + "-1"), false},
	} {
		err := storedMismatch(&s3.HeadObjectOutput{ContentLength: aws.Int64(tc.size), ChecksumSHA256: tc.checksum}, 5, sum)
		if (err == nil) != tc.ok {
			t.Errorf("%s: storedMismatch = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}
