package torchzip

import (
	"bytes"
	"io"
	"strings"
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

// sniff classifies by the first bytes of the file in torch.load's order: a zip by its first
// local header (PK\x03\x04 only), then whatever Python's tarfile opens, then the rest.
func sniff(ra io.ReaderAt) Kind {
	head := make([]byte, tarBlock)
	n, _ := ra.ReadAt(head, 0)
	head = head[:n]
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

// pickleOpcodes lists every opcode of protocols 0 to 5. Python's unpickler starts a stream with
// whatever opcode comes first (PROTO is optional; FRAME or SHORT_BINUNICODE may lead), so any of
// them can begin a pickle that torch.load would run.
const pickleOpcodes = "(.012FILNPRSVabcdgilpst" + // protocol 0
	"GJKMQTUX])}ehjoqru" + // protocol 1
	"\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b" + // protocol 2
	"BC" + // protocol 3
	"\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95" + // protocol 4
	"\x96\x97\x98" // protocol 5

// looksLikePickle reports whether b can start a pickle stream.
func looksLikePickle(b byte) bool { return strings.IndexByte(pickleOpcodes, b) >= 0 }
