package unpickler

import (
	"io"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
)

// Source is what Prescan reads: a byte stream read one opcode at a time (bufio.Reader and
// bytes.Reader both qualify).
type Source interface {
	io.Reader
	io.ByteReader
}

// Scan is what the pre-scanner learned about one pickle stream.
type Scan struct {
	// Protocol is the PROTO operand, or 0/1 when the stream has no PROTO opcode.
	Protocol int
	// Globals lists every GLOBAL, STACK_GLOBAL and INST reference in stream order, classified.
	Globals []Global
	// Length is the number of bytes up to and including STOP.
	Length int64
}

// Prescan walks one pickle stream from src without building any object, and copies its bytes
// into the returned slice for the VM. avail is the number of bytes left in the underlying input
// (a zip entry's size, or the rest of a legacy file); entry names the stream in errors.
//
// Not implemented yet.
func Prescan(src Source, avail int64, entry string, lim limits.Limits, pol *Policy) (*Scan, []byte, error) {
	return &Scan{}, nil, fault.New(fault.Internal, entry, "pre-scanner not implemented")
}
