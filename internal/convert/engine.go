package convert

import "context"

// Engine runs the operations that read a checkpoint. InProcess runs them in the calling
// process; the sandbox package's *Runner runs each in a confined child process, with the same
// contracts (see File, Scan and Verify). The CLI uses either; the job service uses the sandbox.
type Engine interface {
	Convert(ctx context.Context, src, dst string, opts Options) (*Manifest, error)
	Scan(ctx context.Context, src string, opts Options) (*Manifest, error)
	Verify(ctx context.Context, path, source string, opts Options) (*Report, error)
}

// InProcess is the Engine that parses and converts in the calling process: for tests, and for
// a CLI run with --sandbox=false on input the user trusts its machine with.
type InProcess struct{}

// Convert is File.
func (InProcess) Convert(ctx context.Context, src, dst string, opts Options) (*Manifest, error) {
	return File(ctx, src, dst, opts)
}

// Scan is Scan.
func (InProcess) Scan(ctx context.Context, src string, opts Options) (*Manifest, error) {
	return Scan(ctx, src, opts)
}

// Verify is Verify.
func (InProcess) Verify(ctx context.Context, path, source string, opts Options) (*Report, error) {
	return Verify(ctx, path, source, opts)
}
