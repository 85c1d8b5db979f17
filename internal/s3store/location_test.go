package s3store

import (
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/store"
)

func TestParseLocation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		location, bucket, prefix string
	}{
		{"s3://models", "models", ""},
		{"s3://models/", "models", ""},
		{"s3://models/hub", "models", "hub/"},
		{"s3://models/hub/llama-7b//", "models", "hub/llama-7b/"},
	} {
		bucket, prefix, err := ParseLocation(tc.location)
		if err != nil || bucket != tc.bucket || prefix != tc.prefix {
			t.Errorf("ParseLocation(%q) = %q, %q, %v; want %q, %q", tc.location, bucket, prefix, err, tc.bucket, tc.prefix)
		}
	}
	for _, location := range []string{
		"/data/models",       // a local directory is another Tree
		"s3:/models",         // one slash
		"s3:///hub",          // no bucket
		"s3://models/a/../b", // the prefix would not be a relative path
		"s3://models/./hub",
		"s3://models//hub",
	} {
		if _, _, err := ParseLocation(location); fault.KindOf(err) != fault.Internal || err == nil {
			t.Errorf("ParseLocation(%q) = %v; want a classified error", location, err)
		}
	}
}

// TestWalkerEntry covers keys an S3-compatible store can hold but versitygw's POSIX backend
// cannot (it cleans "a/../b" to "b"), as AWS holds them.
func TestWalkerEntry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		key      string
		path     string // "" when the key is no entry at all
		skipping bool
	}{
		{"hub/config.json", "config.json", false},
		{"hub/org/model/pytorch_model.bin", "org/model/pytorch_model.bin", false},
		{"hub/org/", "", false}, // a directory marker, as consoles create
		{"hub//etc/passwd", "/etc/passwd", true},
		{"hub/x/../../../etc/passwd", "x/../../../etc/passwd", true},
		{"hub/y/./z", "y/./z", true},
		{"hub/y//z", "y//z", true},
		{"hub/z\x00.bin", "z\x00.bin", true},
	} {
		var w walker
		obj, skip, err := w.entry("hub/", types.Object{Key: aws.String(tc.key), ETag: aws.String(`"abc"`)})
		if err != nil {
			t.Errorf("entry(%q): %v", tc.key, err)
			continue
		}
		var se *store.SkipError
		if obj.Path != tc.path || errors.As(skip, &se) != tc.skipping || (skip != nil && se.Path != tc.path) {
			t.Errorf("entry(%q) = %q, %v; want %q, skipping %v", tc.key, obj.Path, skip, tc.path, tc.skipping)
		}
		if tc.path != "" && obj.ETag != "abc" {
			t.Errorf("entry(%q).ETag = %q; want it without quotes", tc.key, obj.ETag)
		}
	}
}

func TestWalkerRefusesDisorder(t *testing.T) {
	t.Parallel()
	for _, keys := range [][]string{{"b", "a"}, {"a", "a"}, {"a/b", "a.b"}} {
		var w walker
		_, _, err := w.entry("", types.Object{Key: aws.String(keys[0])})
		if err != nil {
			t.Fatalf("entry(%q): %v", keys[0], err)
		}
		if _, _, err := w.entry("", types.Object{Key: aws.String(keys[1])}); !errors.Is(err, errOrder) {
			t.Errorf("entry(%q) after %q = %v; want %v", keys[1], keys[0], err, errOrder)
		}
	}
	var w walker
	if _, _, err := w.entry("hub/", types.Object{Key: aws.String("other/x")}); err == nil {
		t.Error("a key outside the prefix was accepted")
	}
}
