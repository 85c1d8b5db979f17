// Package torchzip reads the containers PyTorch checkpoints come in: it sniffs the kind by magic
// bytes (never by extension), validates a torch zip archive against the parser-differential
// attacks scanners have fallen for, splits a legacy multi-pickle file into its streams, and gives
// streaming, size-checked readers over each storage's bytes.
//
// It pre-scans every pickle stream it finds (through internal/unpickler) so that dangerous
// content is reported even in a file that is no valid checkpoint, but it never runs a pickle and
// never extracts anything to disk.
package torchzip

import (
	"bytes"
	"io"
)

// Kind is what a file turned out to be.
type Kind string

// The container kinds.
const (
	Zip         Kind = "zip"         // a torch.save zip archive
	Legacy      Kind = "legacy"      // the pre-1.6 multi-pickle format
	Tar         Kind = "tar"         // the pre-0.1.10 tar format (refused)
	TorchScript Kind = "torchscript" // a torch.jit.save archive (refused)
	Pickle      Kind = "pickle"      // one or more bare pickles, no checkpoint (refused)
	Numpy       Kind = "npy"         // a NumPy .npy file (refused)
	SevenZip    Kind = "7z"          // a 7z archive (refused)
	OtherZip    Kind = "zip-other"   // a zip that is not a torch archive (refused)
	Unknown     Kind = "unknown"
)

var (
	magicZip   = []byte("PK\x03\x04")
	magic7z    = []byte("7z\xbc\xaf\x27\x1c")
	magicNumpy = []byte("\x93NUMPY")
)

// sniff classifies by the first bytes of the file, as torch does for zips (PK\x03\x04 only).
func sniff(ra io.ReaderAt, size int64) Kind {
	head := make([]byte, 512)
	n, _ := ra.ReadAt(head, 0)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, magicZip):
		return Zip
	case bytes.HasPrefix(head, magic7z):
		return SevenZip
	case bytes.HasPrefix(head, magicNumpy):
		return Numpy
	case len(head) >= 262 && bytes.Equal(head[257:262], []byte("ustar")):
		return Tar
	case len(head) > 0 && looksLikePickle(head[0]):
		return Pickle // refined to Legacy once the magic number pickle is seen
	}
	return Unknown
}

// looksLikePickle reports whether b can start a pickle: PROTO for protocol 2+, or an opcode that
// protocol 0/1 streams start with.
func looksLikePickle(b byte) bool {
	switch b {
	case 0x80, '(', 'c', ']', '}', ')', 'N', 'I', 'L', 'J', 'K', 'M', 'S', 'T', 'U', 'V', 'X', 'F', 'G', '\x88', '\x89':
		return true
	}
	return false
}
