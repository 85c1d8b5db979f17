package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"syscall"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// ChildCommand is the hidden first argument that makes the converter binary act as a sandbox
// child. main dispatches it before any normal command.
const ChildCommand = "__sandbox-child"

// RunChild is the child's whole life: read the request from stdin, confine itself (resource
// limits, inherited descriptors closed, seccomp filter, Landlock), run the one operation, and
// write the response to stdout. It returns the process exit code: 0 whenever a response was
// written, whatever the verdict; 1 when the request could not be read or the response written.
//
// It must never run in a process that does anything else: the limits and the filter last for
// the life of the process.
func RunChild(stdin io.Reader, stdout, stderr io.Writer) int {
	var req request
	if err := json.NewDecoder(io.LimitReader(stdin, maxRequestBytes)).Decode(&req); err != nil {
		fmt.Fprintf(stderr, "sandbox child: read request: %v\n", err)
		return 1
	}
	resp := serve(&req)
	if err := json.NewEncoder(stdout).Encode(resp); err != nil {
		fmt.Fprintf(stderr, "sandbox child: write response: %v\n", err)
		return 1
	}
	return 0
}

// serve confines the process and runs the request. Confinement failures other than a kernel
// without seccomp are errors: the child fails closed rather than parse input unconfined.
func serve(req *request) *response {
	resp := &response{}
	fail := func(err error) *response {
		resp.Error = encodeError(fault.Wrap(fault.Internal, "", err, "sandbox"))
		return resp
	}
	closed, err := closeInherited()
	if err != nil {
		return fail(fmt.Errorf("close inherited descriptors: %w", err))
	}
	applied, err := setRlimits(req.Rlimits)
	if err != nil {
		return fail(fmt.Errorf("set resource limits: %w", err))
	}
	if req.MemLimit > 0 {
		debug.SetMemoryLimit(req.MemLimit)
	}
	st, err := installSeccomp()
	if err != nil {
		return fail(fmt.Errorf("install seccomp filter: %w", err))
	}
	st.Rlimits, st.ClosedFDs = applied, closed
	// Landlock comes last: the seccomp check above reads /proc, which it would deny.
	st.Landlock, err = restrictFiles(req.access())
	resp.Status = st
	if err != nil {
		return fail(fmt.Errorf("restrict file access: %w", err))
	}

	// The parent enforces the wall-clock limit by killing the child.
	ctx := context.Background()
	switch req.Op {
	case opConvert:
		m, err := convert.File(ctx, req.Src, req.Dst, req.Options)
		resp.Manifest, resp.Error = toWire(m), encodeError(outputLimit(err, req.Rlimits.FileSize))
	case opScan:
		m, err := convert.Scan(ctx, req.Src, req.Options)
		resp.Manifest, resp.Error = toWire(m), encodeError(err)
	case opVerify:
		rep, err := convert.Verify(ctx, req.File, req.Src, req.Options)
		resp.Report, resp.Error = rep, encodeError(err)
	case opProbe:
	default:
		probe, ok := selftest(req)
		if !ok {
			resp.Error = encodeError(fault.New(fault.Internal, "", "sandbox: unknown operation %q", req.Op))
		}
		resp.Probe = probe
	}
	return resp
}

// outputLimit reclassifies a write refused by RLIMIT_FSIZE (EFBIG; the Go runtime ignores
// SIGXFSZ) as the limit it is.
func outputLimit(err error, fsize uint64) error {
	if err != nil && errors.Is(err, syscall.EFBIG) {
		return fault.Wrap(fault.Limit, "", err, "output file size limit (RLIMIT_FSIZE %d bytes) exceeded", fsize)
	}
	return err
}
