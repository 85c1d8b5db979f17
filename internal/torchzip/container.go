package torchzip

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"slices"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/unpickler"
)

// Stream is one pickle stream found in the file, pre-scanned.
type Stream struct {
	// Entry names the stream: a zip entry name, or "pickle#N" (1-based) in a multi-pickle file.
	Entry string
	// Offset is the file offset of the stream's first byte (-1 inside a compressed entry).
	Offset int64
	Scan   *unpickler.Scan
	// Raw holds the stream's bytes for the VM; nil when Err is set.
	Raw []byte
	// Err is set when the pre-scanner refused the stream; Scan still lists the globals found
	// before the refusal.
	Err error
}

// Container is an opened checkpoint file.
type Container struct {
	Kind   Kind
	Prefix string // zip: the inner folder name
	// ByteOrder is the zip's byteorder record ("little" or "big"), or "" when absent (torch then
	// reads the data as little-endian, and so do we).
	ByteOrder string
	// Streams lists every pickle stream scanned, in file order.
	Streams []*Stream
	// Main is the stream holding the saved object (zip data.pkl, legacy pickle #4).
	Main *Stream
	// Keys is the legacy format's sorted storage key list (pickle #5).
	Keys *Stream
	// Problem is the container-level refusal (malformed, unsupported), or nil. It is reported
	// only after the streams' globals have been judged: dangerous content wins over it.
	Problem error

	ra      io.ReaderAt
	size    int64
	lim     limits.Limits
	pol     *unpickler.Policy
	records map[string]*Record // storage key -> record
	dataEnd int64              // legacy: end of the raw storage area once located
}

// Open sniffs and reads the container structure of the file: it validates the zip directory or
// splits the legacy pickles, and pre-scans every pickle stream it finds. It reads no tensor
// bytes. The returned Container is never nil; input problems are in Container.Problem, and the
// error is reserved for I/O failures.
func Open(ra io.ReaderAt, size int64, lim limits.Limits, pol *unpickler.Policy) (*Container, error) {
	c := &Container{ra: ra, size: size, lim: lim, pol: pol, records: map[string]*Record{}}
	if size > lim.MaxFileBytes {
		c.Kind = Unknown
		c.Problem = fault.New(fault.Limit, "", "file of %d bytes exceeds limit max-file-bytes %d", size, lim.MaxFileBytes)
		return c, nil
	}
	c.Kind = sniff(ra)
	var err error
	switch c.Kind {
	case Zip:
		err = c.openZip()
	case Pickle:
		err = c.openPickles()
	case Numpy:
		err = c.openNumpy()
	case Tar:
		err = c.openTar()
	case SevenZip:
		c.Problem = fault.New(fault.Unsupported, "", "7z archive: not a PyTorch checkpoint container")
	default:
		c.Problem = fault.New(fault.Unsupported, "", "not a PyTorch checkpoint (no zip, legacy pickle, tar or npy signature)")
	}
	return c, err
}

// scan pre-scans one pickle stream of at most avail bytes read from src, appends it to
// c.Streams and returns it.
func (c *Container) scan(src unpickler.Source, avail int64, entry string, offset int64) *Stream {
	s := &Stream{Entry: entry, Offset: offset}
	s.Scan, s.Raw, s.Err = unpickler.Prescan(src, avail, entry, c.lim, c.pol)
	if s.Err != nil {
		s.Raw = nil
	}
	if len(s.Raw) < 32<<10 {
		// Prescan's copy lives in a buffer of at least 64 KiB (its cap is clipped, the array
		// is not): keeping it for every small stream of a many-stream file would retain
		// 64 KiB per stream, 64 GB for a 2 MB file of a million "N." pickles.
		s.Raw = bytes.Clone(s.Raw)
	}
	if s.Scan == nil {
		s.Scan = &unpickler.Scan{}
	}
	c.Streams = append(c.Streams, s)
	return s
}

// newSource reads n bytes of ra from off through a buffer. Prescan reports where STOP ended, so
// back-to-back pickles are split exactly even though the buffer reads ahead.
func newSource(ra io.ReaderAt, off, n int64) *bufio.Reader {
	return bufio.NewReaderSize(io.NewSectionReader(ra, off, n), 64<<10)
}

// Globals returns every global seen in every stream, tagged with its stream.
func (c *Container) Globals() []EntryGlobal {
	var out []EntryGlobal
	for _, s := range c.Streams {
		for _, g := range s.Scan.Globals {
			out = append(out, EntryGlobal{Entry: s.Entry, Global: g})
		}
	}
	return out
}

// EntryGlobal is a global with the stream it was found in.
type EntryGlobal struct {
	Entry string
	unpickler.Global
}

// StorageKeys returns the keys of the records located so far (a zip's, or a legacy file's once
// LocateLegacy has run), sorted; for a zip they are folded to lower case, as miniz finds them.
func (c *Container) StorageKeys() []string {
	return slices.Sorted(maps.Keys(c.records))
}
