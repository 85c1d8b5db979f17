// Package fault defines the classified errors every layer of the converter returns for bad
// input, so that the CLI can pick an exit code and the service a problem type without ever
// matching on error strings.
//
// A fault says what failed, where (the container entry and the byte offset inside it) and why.
// It never carries the offending input itself beyond short names such as a pickle global.
package fault

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// Kind classifies a failure. The zero value is Internal so that an unclassified error is never
// mistaken for a verdict about the input.
type Kind int

const (
	// Internal is a failure of the converter or its environment (I/O, disk full), not of the input.
	Internal Kind = iota
	// Unsafe means the input references a global or uses an opcode outside the allowlist.
	Unsafe
	// Malformed means the input is not a well-formed checkpoint.
	Malformed
	// Unsupported means the input is well formed but uses a feature the converter refuses on
	// purpose (TorchScript, quantized tensors, complex128, ...).
	Unsupported
	// Limit means the input exceeds one of the configured Limits.
	Limit
	// Canceled means the work was stopped by its caller (context canceled or deadline).
	Canceled
)

// String returns the stable lower-case name of the kind, used in JSON reports and problem types.
func (k Kind) String() string {
	switch k {
	case Unsafe:
		return "unsafe"
	case Malformed:
		return "malformed"
	case Unsupported:
		return "unsupported"
	case Limit:
		return "limit"
	case Canceled:
		return "canceled"
	default:
		return "internal"
	}
}

// MarshalText encodes the kind as its String, so that it crosses JSON (a manifest, the sandbox
// pipe, the API) and SQLite by name.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText decodes a kind from its String; an unknown name is an error, never a guess.
func (k *Kind) UnmarshalText(b []byte) error {
	for c := Internal; c <= Canceled; c++ {
		if c.String() == string(b) {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("unknown fault kind %q", b)
}

// ExitCode maps a kind to the CLI exit code contract: 3 unsafe, 4 malformed, unsupported or over
// a limit, 1 anything else.
func (k Kind) ExitCode() int {
	switch k {
	case Unsafe:
		return 3
	case Malformed, Unsupported, Limit:
		return 4
	default:
		return 1
	}
}

// Error is a classified failure. Entry names the container part (a zip entry such as
// "archive/data.pkl", or "pickle#4" in a legacy file); Offset is the byte offset inside that part,
// or -1 when no single offset applies.
type Error struct {
	Kind   Kind
	Entry  string
	Offset int64
	Msg    string
	Err    error // optional cause
}

// Error formats "KIND: ENTRY@OFFSET: MSG: CAUSE", omitting the parts that are unset.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind.String())
	b.WriteString(": ")
	if e.Entry != "" {
		b.WriteString(e.Entry)
		if e.Offset >= 0 {
			fmt.Fprintf(&b, "@%d", e.Offset)
		}
		b.WriteString(": ")
	} else if e.Offset >= 0 {
		fmt.Fprintf(&b, "offset %d: ", e.Offset)
	}
	b.WriteString(e.Msg)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// New returns a classified error with a formatted message and no single offset.
func New(kind Kind, entry string, format string, args ...any) *Error {
	return &Error{Kind: kind, Entry: entry, Offset: -1, Msg: fmt.Sprintf(format, args...)}
}

// At returns a classified error located at a byte offset inside entry.
func At(kind Kind, entry string, offset int64, format string, args ...any) *Error {
	return &Error{Kind: kind, Entry: entry, Offset: offset, Msg: fmt.Sprintf(format, args...)}
}

// Wrap classifies cause, keeping it reachable through errors.Is and errors.As.
func Wrap(kind Kind, entry string, cause error, format string, args ...any) *Error {
	return &Error{Kind: kind, Entry: entry, Offset: -1, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// KindOf returns the kind of the first *Error in err's chain, Canceled for context errors, and
// Internal for anything else.
func KindOf(err error) Kind {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Kind
	}
	if isContextErr(err) {
		return Canceled
	}
	return Internal
}

// PathFree returns the cause of a failed file operation without the path it names (an
// *fs.PathError or *os.LinkError): messages name files by the names their users know, never
// by a server's paths. Any other error is returned as it is.
func PathFree(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	return err
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
