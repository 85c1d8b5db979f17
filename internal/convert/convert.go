// Package convert turns a PyTorch checkpoint into a verified safetensors file: it plans the
// tensors from the restricted unpickler's object graph, streams their bytes from the source into
// the output, re-reads the output with a strict reader and compares every tensor's SHA-256, and
// records it all in a Manifest.
//
// It never executes anything a pickle names, never holds a buffer proportional to the model, and
// never leaves a partial file at the output path.
package convert

import (
	"context"
	"errors"

	"github.com/ptsafe/converter/internal/limits"
)

// Options configure one conversion or scan.
type Options struct {
	// Select converts only the subtree at this dotted path.
	Select string
	// AllowGlobals admits extra "module.name" globals as inert records.
	AllowGlobals []string
	// Limits bounds the work; zero fields take their defaults.
	Limits limits.Limits
	// SourceName is recorded in the manifest instead of the source path when set (the service
	// passes the uploaded file name).
	SourceName string
}

// File converts the checkpoint at src into a safetensors file at dst and returns its manifest.
// On any error no file exists at dst. Errors on bad input are *fault.Error values.
func File(ctx context.Context, src, dst string, opts Options) (*Manifest, error) {
	return nil, errors.New("not implemented")
}

// Scan builds the same plan as File without writing anything. The manifest's Verdict and Error
// say whether the file is safe; the returned error is set only when the scan itself could not
// run (the file cannot be opened).
func Scan(ctx context.Context, src string, opts Options) (*Manifest, error) {
	return nil, errors.New("not implemented")
}
