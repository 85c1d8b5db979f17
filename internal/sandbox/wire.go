package sandbox

import (
	"context"
	"errors"
	"strings"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// Operations a child understands. Test-only operations exist only in binaries built with the
// sandboxtest tag (see selftest.go).
const (
	opConvert = "convert"
	opScan    = "scan"
	opVerify  = "verify"
	opProbe   = "probe"
)

// maxRequestBytes bounds the request a child reads from its parent (names and options only).
const maxRequestBytes = 1 << 20

// request is what the parent sends the child on stdin.
type request struct {
	Op string `json:"op"`
	// Files names the descriptors the parent passes from fd 3 on, in the operation's order
	// (convert: source, output; scan: source; verify: file, then source when compared). The
	// names appear in the manifest and in messages only: the child opens no path but its
	// scratch directory.
	Files   []string        `json:"files,omitempty"`
	Options convert.Options `json:"options"`
	Rlimits rlimits         `json:"rlimits"`
	// MemLimit is the Go runtime's soft memory limit (GOMEMLIMIT), kept below the
	// address-space limit so the collector works hard before an allocation fails.
	MemLimit int64 `json:"mem_limit"`
	// MaxResponse is the most the parent reads of the child's answer.
	MaxResponse int64 `json:"max_response"`
	// Progress says that the descriptor after Files is a pipe for the operation's progress:
	// the child writes each convert.Progress to it as a line of JSON.
	Progress bool `json:"progress,omitempty"`
	// Arg parameterises test-only operations.
	Arg string `json:"arg,omitempty"`
}

// rlimits are the resource limits the child sets on itself before it reads any input.
type rlimits struct {
	AddressSpace uint64 `json:"as"`     // RLIMIT_AS, bytes
	CPUSeconds   uint64 `json:"cpu"`    // RLIMIT_CPU soft limit, seconds; hard is one more
	OpenFiles    uint64 `json:"nofile"` // RLIMIT_NOFILE
	FileSize     uint64 `json:"fsize"`  // RLIMIT_FSIZE, bytes
}

// Status says how well a child was confined.
type Status struct {
	// Rlimits is true when every resource limit was set.
	Rlimits bool `json:"rlimits"`
	// Seccomp is "filter" when the syscall filter is installed on every thread, otherwise it
	// says why not ("unsupported: ...").
	Seccomp string `json:"seccomp"`
	// TSync is true when the kernel synchronised the filter onto every thread and /proc showed
	// each thread in seccomp mode 2.
	TSync bool `json:"tsync"`
	// Threads is the number of threads checked in /proc/self/task.
	Threads int `json:"threads"`
	// Landlock is "abi N" when the child may open no path but its private scratch directory,
	// otherwise it says why not ("unsupported: ...").
	Landlock string `json:"landlock"`
	// ClosedFDs counts descriptors beyond stdin/stdout/stderr and the files the parent passed
	// that the child found inherited and closed before reading input.
	ClosedFDs int `json:"closed_fds,omitempty"`
}

// Degraded reports whether the child ran with less confinement than designed, and why.
func (s Status) Degraded() (string, bool) {
	switch {
	case !s.Rlimits:
		return "resource limits not set", true
	case s.Seccomp != "filter":
		return "seccomp " + s.Seccomp, true
	case !strings.HasPrefix(s.Landlock, "abi "):
		return "landlock " + s.Landlock, true
	}
	return "", false
}

// response is what the child writes on stdout: a manifest, a classified error, or both (a
// scan's verdict travels inside its manifest).
type response struct {
	Manifest *convert.Manifest `json:"manifest,omitempty"`
	Error    *wireError        `json:"error,omitempty"`
	Status   Status            `json:"status"`
	Report   *convert.Report   `json:"report,omitempty"`
	Probe    map[string]string `json:"probe,omitempty"`
}

// wireError carries an error across the pipe so that the parent's copy prints the same text
// and classifies the same way (fault.KindOf, errors.Is for context errors).
type wireError struct {
	// Text is err.Error() in the child, reproduced exactly by the parent.
	Text string `json:"text"`
	// Fault is the first *fault.Error in the chain, if any.
	Fault *wireFault `json:"fault,omitempty"`
	// Context is "canceled" or "deadline" when the chain holds a context error.
	Context string `json:"context,omitempty"`
}

type wireFault struct {
	Kind   fault.Kind `json:"kind"`
	Entry  string     `json:"entry"`
	Offset int64      `json:"offset"`
	Msg    string     `json:"msg"`
	Cause  string     `json:"cause,omitempty"`
	// HasCause distinguishes a cause with an empty message from no cause.
	HasCause bool `json:"has_cause,omitempty"`
}

func encodeError(err error) *wireError {
	if err == nil {
		return nil
	}
	w := &wireError{Text: err.Error()}
	switch {
	case errors.Is(err, context.Canceled):
		w.Context = "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		w.Context = "deadline"
	}
	var fe *fault.Error
	if errors.As(err, &fe) {
		w.Fault = &wireFault{Kind: fe.Kind, Entry: fe.Entry, Offset: fe.Offset, Msg: fe.Msg}
		if fe.Err != nil {
			w.Fault.Cause, w.Fault.HasCause = fe.Err.Error(), true
		}
	}
	return w
}

// remoteError is an error that happened in the child: its text is the child's, and it unwraps
// to a reconstructed *fault.Error or context error so classification is unchanged.
type remoteError struct {
	text  string
	cause error
}

func (e *remoteError) Error() string { return e.text }
func (e *remoteError) Unwrap() error { return e.cause }

func (w *wireError) decode() error {
	var ctxErr error
	switch w.Context {
	case "canceled":
		ctxErr = context.Canceled
	case "deadline":
		ctxErr = context.DeadlineExceeded
	}
	if w.Fault == nil {
		return &remoteError{text: w.Text, cause: ctxErr}
	}
	fe := &fault.Error{Kind: w.Fault.Kind, Entry: w.Fault.Entry, Offset: w.Fault.Offset, Msg: w.Fault.Msg}
	if w.Fault.HasCause {
		fe.Err = &remoteError{text: w.Fault.Cause, cause: ctxErr}
	}
	if fe.Error() == w.Text {
		return fe
	}
	return &remoteError{text: w.Text, cause: fe}
}
