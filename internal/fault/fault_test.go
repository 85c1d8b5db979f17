package fault_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
)

// TestErrorText checks the "KIND: ENTRY@OFFSET: MSG: CAUSE" layout, each part omitted when unset:
// the CLI prints this text as its one stderr line, so a reader relies on it.
func TestErrorText(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  *fault.Error
		want string
	}{
		{"entry and offset", fault.At(fault.Unsafe, "archive/data.pkl", 12, "global %s is known-dangerous", "os.system"),
			"unsafe: archive/data.pkl@12: global os.system is known-dangerous"},
		{"entry without offset", fault.New(fault.Malformed, "archive/data/0", "record is %d bytes, want %d", 8, 16),
			"malformed: archive/data/0: record is 8 bytes, want 16"},
		{"offset without entry", fault.At(fault.Malformed, "", 7, "truncated"), "malformed: offset 7: truncated"},
		{"neither", fault.New(fault.Unsupported, "", "TorchScript archives"), "unsupported: TorchScript archives"},
		{"offset zero is an offset", fault.At(fault.Limit, "pickle#2", 0, "too deep"), "limit: pickle#2@0: too deep"},
		{"cause appended", fault.Wrap(fault.Internal, "", io.ErrShortWrite, "write output"), "internal: write output: short write"},
	}
	for _, c := range cases {
		if got := c.err.Error(); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

// TestKindOf checks that the kind survives wrapping by callers, that context errors are
// Canceled wherever they sit in the chain, and that anything unclassified is Internal rather
// than a verdict about the input.
func TestKindOf(t *testing.T) {
	t.Parallel()
	unsafe := fault.At(fault.Unsafe, "data.pkl", 3, "global os.system is known-dangerous")
	cases := []struct {
		name string
		err  error
		want fault.Kind
	}{
		{"fault", unsafe, fault.Unsafe},
		{"wrapped by fmt", fmt.Errorf("scan x.pt: %w", unsafe), fault.Unsafe},
		{"joined", errors.Join(io.EOF, unsafe), fault.Unsafe},
		{"outermost fault wins", fault.Wrap(fault.Limit, "", unsafe, "over a limit"), fault.Limit},
		{"canceled", context.Canceled, fault.Canceled},
		{"deadline, wrapped", fmt.Errorf("convert: %w", context.DeadlineExceeded), fault.Canceled},
		{"plain error", os.ErrNotExist, fault.Internal},
	}
	for _, c := range cases {
		if got := fault.KindOf(c.err); got != c.want {
			t.Errorf("%s: KindOf = %s, want %s", c.name, got, c.want)
		}
	}
}

// TestWrapKeepsCause checks that a wrapped cause stays reachable through errors.Is and
// errors.As, so callers can still test for os.ErrNotExist and the like.
func TestWrapKeepsCause(t *testing.T) {
	t.Parallel()
	_, cause := os.Open("/nonexistent/converter-fault-test")
	err := fmt.Errorf("run: %w", fault.Wrap(fault.Internal, "", cause, "open input"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("errors.Is(%v, os.ErrNotExist) = false", err)
	}
	var pe *os.PathError
	if !errors.As(err, &pe) {
		t.Errorf("errors.As(%v, *os.PathError) = false", err)
	}
	var fe *fault.Error
	if !errors.As(err, &fe) {
		t.Fatalf("errors.As(%v, *fault.Error) = false", err)
	}
	if fe.Offset != -1 {
		t.Errorf("Wrap set offset %d; want -1 (no single offset)", fe.Offset)
	}
}

// TestKindNamesAndExitCodes pins the names (JSON reports, problem types) and the exit codes
// (the CLI contract in README.md) of every kind.
func TestKindNamesAndExitCodes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		kind fault.Kind
		name string
		exit int
	}{
		{fault.Internal, "internal", 1},
		{fault.Unsafe, "unsafe", 3},
		{fault.Malformed, "malformed", 4},
		{fault.Unsupported, "unsupported", 4},
		{fault.Limit, "limit", 4},
		{fault.Canceled, "canceled", 1},
	}
	for _, c := range cases {
		if got := c.kind.String(); got != c.name {
			t.Errorf("Kind(%d).String() = %q, want %q", int(c.kind), got, c.name)
		}
		if got := c.kind.ExitCode(); got != c.exit {
			t.Errorf("%s.ExitCode() = %d, want %d", c.name, got, c.exit)
		}
	}
	var zero fault.Kind
	if zero != fault.Internal {
		t.Errorf("the zero Kind is %s; want internal, so that an unclassified error is never a verdict", zero)
	}
}

// TestKindText checks that every kind decodes from the text it encodes to, and that an unknown
// name is refused: the sandbox pipe, the manifest and the job store carry kinds as text.
func TestKindText(t *testing.T) {
	t.Parallel()
	for k := fault.Internal; k <= fault.Canceled; k++ {
		b, err := k.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var got fault.Kind
		if err := got.UnmarshalText(b); err != nil || got != k {
			t.Errorf("%q decodes to %v, %v; want %v", b, got, err, k)
		}
	}
	var k fault.Kind
	if err := k.UnmarshalText([]byte("fatal")); err == nil {
		t.Error("unknown kind name accepted")
	}
}

// TestPathFree checks that a failed open loses its path but keeps its cause for errors.Is.
func TestPathFree(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := os.Open(dir + "/missing")
	got := fault.PathFree(err)
	if !errors.Is(got, os.ErrNotExist) || strings.Contains(got.Error(), dir) {
		t.Errorf("PathFree(%v) = %v; want the cause without %s", err, got, dir)
	}
	if other := io.ErrShortWrite; fault.PathFree(other) != other {
		t.Error("PathFree changed an error without a path")
	}
}
