package torchzip

import (
	"bytes"
	"io"

	"github.com/ptsafe/converter/internal/unpickler"
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

// SniffLen is how many leading bytes of a file Sniff needs to decide.
const SniffLen = tarBlock

// sniff classifies the file by its first SniffLen bytes; see Sniff.
func sniff(ra io.ReaderAt) Kind {
	head := make([]byte, SniffLen)
	n, _ := ra.ReadAt(head, 0)
	return Sniff(head[:n])
}

// Sniff classifies a file by head, its first SniffLen bytes (fewer for a shorter file), in
// torch.load's order: a zip by its first local header (PK\x03\x04 only), then whatever Python's
// tarfile opens, then the rest. Pickle is only a guess from the first byte (Open refines it to
// Legacy); Unknown means torch.load would find no container and no pickle opcode to start with.
func Sniff(head []byte) Kind {
	switch {
	case bytes.HasPrefix(head, magicZip):
		return Zip
	case isPythonTar(head):
		return Tar
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

// looksLikePickle reports whether b can start a pickle stream: Python's unpickler starts with
// whatever opcode comes first (PROTO is optional; FRAME or SHORT_BINUNICODE may lead), so any
// opcode can begin a pickle that torch.load would run.
func looksLikePickle(b byte) bool { return unpickler.IsOpcode(b) }
