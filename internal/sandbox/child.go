package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"syscall"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// ChildCommand is the hidden first argument that makes the converter binary act as a sandbox
// child. main dispatches it before any normal command.
const ChildCommand = "__sandbox-child"

// RunChild is the child's whole life: read the request from stdin, adopt the descriptors the
// parent passed, confine itself (resource limits, other inherited descriptors closed, seccomp
// filter, Landlock), run the one operation, and write the response to stdout. It returns the
// process exit code: 0 whenever a response was written, whatever the verdict; 1 when the
// request could not be read or the response written.
//
// It must never run in a process that does anything else: the limits and the filter last for
// the life of the process.
func RunChild(stdin io.Reader, stdout, stderr io.Writer) int {
	var req request
	if err := json.NewDecoder(io.LimitReader(stdin, maxRequestBytes)).Decode(&req); err != nil {
		fmt.Fprintf(stderr, "sandbox child: read request: %v\n", err)
		return 1
	}
	if err := writeAnswer(stdout, serve(&req), req.MaxResponse); err != nil {
		fmt.Fprintf(stderr, "sandbox child: write response: %v\n", err)
		return 1
	}
	return 0
}

// firstFile is the descriptor of the first file the parent passes (exec.Cmd.ExtraFiles).
const firstFile = 3

// serve confines the process and runs the request. Confinement failures other than a kernel
// without seccomp are errors: the child fails closed rather than parse input unconfined.
func serve(req *request) *response {
	resp := &response{}
	fail := func(err error) *response {
		resp.Error = encodeError(fault.Wrap(fault.Internal, "", err, "sandbox"))
		return resp
	}
	passed := len(req.Files)
	if req.Progress {
		passed++
	}
	closed, err := closeInherited(firstFile + passed)
	if err != nil {
		return fail(fmt.Errorf("close inherited descriptors: %w", err))
	}
	files := make([]*os.File, len(req.Files))
	for i, name := range req.Files {
		files[i] = os.NewFile(uintptr(firstFile+i), name)
	}
	if req.Progress {
		// A parent that stopped reading is no reason to fail the operation: errors are dropped.
		enc := json.NewEncoder(os.NewFile(uintptr(firstFile+len(req.Files)), "progress"))
		req.Options.Progress = func(p convert.Progress) { _ = enc.Encode(p) }
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
	st.Landlock, err = restrictFiles(req.Options.ScratchDir)
	resp.Status = st
	if err != nil {
		return fail(fmt.Errorf("restrict file access: %w", err))
	}

	// convert enforces the time limit itself; the parent's wall clock only backs it up.
	ctx := context.Background()
	switch req.Op {
	case opConvert:
		if len(files) != 2 {
			return fail(fmt.Errorf("convert wants 2 files (source, output), got %d", len(files)))
		}
		m, err := convert.FileFD(ctx, files[0], files[1], req.Options)
		resp.Manifest, resp.Error = m, encodeError(outputLimit(err, req.Rlimits.FileSize))
	case opScan:
		if len(files) != 1 {
			return fail(fmt.Errorf("scan wants 1 file (source), got %d", len(files)))
		}
		m, err := convert.ScanFD(ctx, files[0], req.Options)
		resp.Manifest, resp.Error = m, encodeError(err)
	case opVerify:
		if len(files) != 1 && len(files) != 2 {
			return fail(fmt.Errorf("verify wants 1 or 2 files (file, source), got %d", len(files)))
		}
		var source *os.File
		if len(files) == 2 {
			source = files[1]
		}
		rep, err := convert.VerifyFD(ctx, files[0], source, req.Options)
		resp.Report, resp.Error = rep, encodeError(err)
	case opProbe:
	default:
		probe, ok := selftest(req, files)
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
