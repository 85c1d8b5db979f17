// Package convert turns a PyTorch checkpoint into a verified safetensors file: it plans the
// tensors from the restricted unpickler's object graph, streams their bytes from the source into
// the output, reads every byte back and compares it with what was written (a staging copy is
// checked by its upload instead, see Options.Staging), hashes the output and each tensor, checks
// the header with a strict reader, and records it all in a Manifest.
//
// It never executes anything a pickle names, never holds a buffer proportional to the model, and
// never leaves a partial file at the output path.
package convert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ptsafe/converter/internal/atomicfile"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"golang.org/x/sync/errgroup"
)

// Options configure one conversion or scan.
type Options struct {
	// Select converts only the subtree at this dotted path.
	Select string
	// AllowGlobals admits extra "module.name" globals as inert records.
	AllowGlobals []string
	// Limits bounds the work; zero fields take their defaults.
	Limits limits.Limits
	// SourceName is recorded in the manifest instead of the source path when set (the service
	// passes the uploaded file name).
	SourceName string
	// ScratchDir is where deflated records that need random access are inflated (default
	// os.TempDir(); File defaults it to the output's directory). A sandbox child can create
	// files nowhere else.
	ScratchDir string
	// Overwrite lets the output replace a file that appears at the destination while the
	// conversion runs; without it, such a file is left alone and the conversion fails with an
	// error matching fs.ErrExist. (The CLI refuses an existing OUTPUT before it starts.)
	Overwrite bool
	// Staging marks the output as a local staging copy that is uploaded and deleted right
	// after (batch to an S3 DEST): its bytes are hashed as always, but its disk writeback is
	// not started early and neither it nor its directory is fsynced, so that a copy that lives
	// seconds need never reach the disk; a crash loses only the staging copy. Nor is it read
	// back: its one reader, the upload, checks every byte it reads against the digests taken
	// here over the bytes written (Output.SHA256, or each part's in Output.PartSHA256, which
	// the store checks), and fails on any difference, as the read-back would.
	Staging bool `json:",omitempty"`
	// PartSize, when positive (at least MinHashPartSize), has the output's bytes also hashed per
	// consecutive PartSize bytes into Output.PartSHA256: the checksums of an upload in parts of
	// that size, taken as the bytes are written so that the upload need not hash them again.
	PartSize int64 `json:",omitempty"`
	// MinFreeBytes, when positive, is the free space File must leave on the output's file
	// system: a conversion whose planned output (and scratch files) would leave less is refused
	// with a limit fault before any byte is written.
	MinFreeBytes int64
	// Progress, when set, is called with the operation's progress (see Progress): at each
	// phase's start and end, and in between at most every quarter second, from one goroutine
	// at a time. It is no part of the options' JSON: a sandbox child reports progress to its
	// parent over a pipe of its own.
	Progress func(Progress) `json:"-"`
	// Written, when set, is called once the output is written and verified, before it is
	// synced and moved into place (not for a file that fails before): a caller that bounds
	// its concurrent conversions may start the next one while this one waits for the disk.
	Written func() `json:"-"`
}

// Validate checks options that do not depend on the input: every --allow-global entry must be
// MODULE.NAME and not a known-dangerous global.
func (o Options) Validate() error {
	_, err := policy(o.AllowGlobals)
	return err
}

// DisplayName is the name the source at path goes by in manifests and messages: SourceName
// when set, else path as the caller gave it.
func (o Options) DisplayName(path string) string {
	if o.SourceName != "" {
		return o.SourceName
	}
	return path
}

func newManifest(src string, opts Options) *Manifest {
	return &Manifest{
		ConverterVersion: Version,
		Source:           Source{Path: opts.DisplayName(src)},
		Globals:          []GlobalRef{},
		Tensors:          []Tensor{},
		Aliases:          map[string]string{},
		Dropped:          []Dropped{},
	}
}

// File converts the checkpoint at src into a safetensors file at dst and returns its manifest:
// FileFD on src opened with OpenInput and a PendingFile for dst, committed on success. On any
// error no file exists at dst. Errors on bad input are *fault.Error values; a file refused as
// unsafe, malformed or unsupported also gets its manifest, as Scan gives it.
func File(ctx context.Context, src, dst string, opts Options) (*Manifest, error) {
	in, err := OpenInput(src)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	out, err := CreatePending(dst, opts)
	if err != nil {
		return nil, err
	}
	defer out.Discard()
	if opts.ScratchDir == "" {
		opts.ScratchDir = filepath.Dir(dst) // the output's disk, not a RAM-backed /tmp
	}
	m, err := FileFD(ctx, in, out.File, opts)
	if err != nil {
		return m, err
	}
	if opts.Written != nil {
		opts.Written()
	}
	if err := out.Commit(); err != nil {
		return nil, err
	}
	m.Output.Path = dst
	return m, nil
}

// FileFD converts the checkpoint read from src (opened with OpenInput) into out, an empty file
// open for reading and writing, and returns the manifest. out is written, read back and
// verified, but not synced, closed or renamed: the caller commits it (PendingFile.Commit syncs
// it, its disk writeback having been started as it was written), and the
// manifest's Output.Path is out.Name() until then. Deflated records that need random access
// are inflated into files in opts.ScratchDir (default os.TempDir()). It opens no path of its
// own otherwise, so it runs in a sandbox child that may open none.
// A file refused as unsafe, malformed or unsupported is reported as Scan reports it: the
// manifest (verdict, error, globals, the planned tensors, the source's digest) comes with the
// error, so that a caller need not scan the file again to say why; a refusal that only the
// tensor bytes show (a bad CRC, say) is in it too, which a scan would call safe. Other errors
// come without a manifest.
// It stops with a limit fault when Limits.Timeout runs out.
func FileFD(ctx context.Context, src, out *os.File, opts Options) (*Manifest, error) {
	ctx, cancel, over := timeLimit(ctx, opts.Limits)
	defer cancel()
	m := newManifest(src.Name(), opts)
	rep := &reporter{fn: opts.Progress}
	rep.phase(PhaseScanning, 0, 0)
	p, err := open(src, opts, m)
	if err == nil {
		err = write(ctx, p, src, out, opts, m, rep)
	}
	switch err = over(err); {
	case err == nil:
		return m, nil
	case refused(err):
		return judged(ctx, src, m, err, rep, over)
	}
	return nil, err
}

// refused reports whether err is a verdict on the file itself: unsafe, malformed or
// unsupported, which a scan of the file would repeat (not a limit, which may be the time).
func refused(err error) bool {
	switch fault.KindOf(err) {
	case fault.Unsafe, fault.Malformed, fault.Unsupported:
		return true
	}
	return false
}

// write converts the planned file into out, filling in the manifest.
func write(ctx context.Context, p *plan, src, out *os.File, opts Options, m *Manifest, rep *reporter) error {
	// The whole-file digest is a sequential pass of its own, overlapping the conversion.
	srcSum := make(chan result, 1)
	go func() { srcSum <- hashReader(ctx, io.NewSectionReader(src, 0, m.Source.Size)) }()

	p.scratchDir = scratchDir(opts)
	p.staging, p.partSize = opts.Staging, opts.PartSize
	if err := p.checkHeader(); err != nil {
		return err
	}
	if err := p.checkFree(out, opts.MinFreeBytes); err != nil {
		return err
	}
	sums, output, err := p.write(ctx, out, rep)
	if err != nil {
		return err
	}
	rep.then(PhaseVerifying)
	src256 := <-srcSum
	if src256.err != nil {
		return src256.err
	}
	m.Source.SHA256 = src256.sum
	output.Path, output.Size = out.Name(), p.layout.Size
	m.Output = output
	m.Verdict = "safe"
	for i, lt := range p.layout.Tensors {
		m.Tensors[i].DataOffsets = &[2]int64{lt.Begin, lt.End}
		m.Tensors[i].SHA256 = sums[i]
	}
	return nil
}

// timeLimit gives ctx the time limit of one operation, Limits.Timeout, which convert enforces
// itself (the sandbox's wall clock and CPU limit are larger backstops). over maps the error of
// work done under the returned context to the limit fault when that limit is what ran out,
// whatever the work returned: a context error, or a failure of an interrupted read.
func timeLimit(ctx context.Context, l limits.Limits) (context.Context, context.CancelFunc, func(error) error) {
	timeout := l.OrDefault().Timeout
	limitErr := fault.New(fault.Limit, "", "conversion exceeded the time limit of %s", timeout)
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, limitErr)
	over := func(err error) error {
		if err != nil && context.Cause(ctx) == error(limitErr) {
			return limitErr
		}
		return err
	}
	return ctx, cancel, over
}

// scratchDir is where inflated records go: opts.ScratchDir, or the system's temporary directory.
func scratchDir(opts Options) string {
	if opts.ScratchDir != "" {
		return opts.ScratchDir
	}
	return os.TempDir()
}

// OpenInput opens the file at path for reading as a conversion's input. Its errors do not name
// the path, which may be a server's. Anything but a regular
// file (a FIFO, socket, device or directory) is refused with a fault.Unsupported before a byte is
// read: the file was never parsed, so it cannot be called malformed, and a converter reads
// checkpoints from files by design. The path is checked with stat before it is opened, so that
// no device's open routine runs, and the descriptor with fstat after, so that a path swapped in
// between cannot bring another kind of file in; the open itself is O_NONBLOCK, so a FIFO
// swapped in cannot make it wait for a writer (on a regular file, O_NONBLOCK changes nothing).
func OpenInput(path string) (*os.File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", fault.PathFree(err), "open input")
	}
	if err := regular(st); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", fault.PathFree(err), "open input")
	}
	if st, err = f.Stat(); err != nil {
		f.Close()
		return nil, fault.Wrap(fault.Internal, "", fault.PathFree(err), "stat input")
	}
	if err := regular(st); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// regular refuses a file that is not a regular file, naming what it is.
func regular(st os.FileInfo) error {
	mode := st.Mode()
	if mode.IsRegular() {
		return nil
	}
	what := "a special file"
	switch {
	case mode.IsDir():
		what = "a directory"
	case mode&os.ModeNamedPipe != 0:
		what = "a named pipe (FIFO)"
	case mode&os.ModeSocket != 0:
		what = "a socket"
	case mode&os.ModeCharDevice != 0:
		what = "a character device"
	case mode&os.ModeDevice != 0:
		what = "a block device"
	}
	return fault.New(fault.Unsupported, "", "input is not a regular file: it is %s", what)
}

// PendingFile is an output being written under a unique temporary name in its destination's
// directory (an atomicfile.File). Commit moves it into place; until then nothing exists at the
// destination, and Discard removes it.
type PendingFile struct {
	// File is the temporary file, open for reading and writing.
	*os.File
	af *atomicfile.File
}

// CreatePending creates the temporary file for dst: private (0600) until committed, beside dst
// so that the move is atomic, with a name unique to this call. Without opts.Overwrite, Commit
// never replaces a file that appeared at dst meanwhile; with opts.Staging, it syncs nothing.
func CreatePending(dst string, opts Options) (*PendingFile, error) {
	mode := atomicfile.NoReplace
	if opts.Overwrite {
		mode = atomicfile.Replace
	}
	af, err := atomicfile.Create(dst, 0o644, mode)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", fault.PathFree(err), "create output")
	}
	if opts.Staging {
		af.Volatile()
	}
	return &PendingFile{File: af.File, af: af}, nil
}

// Commit syncs the file and moves it to its destination, readable as a file written by a
// plain create (0644), then syncs the directory so that the move survives a crash. A file at
// the destination, when not overwriting, fails it with an error matching fs.ErrExist.
func (p *PendingFile) Commit() error {
	if err := p.af.Commit(); err != nil {
		return fault.Wrap(fault.Internal, "", fault.PathFree(err), "commit output")
	}
	return nil
}

// Discard closes and removes the temporary file unless it was committed; deferring it right
// after CreatePending leaves nothing behind on any error.
func (p *PendingFile) Discard() { p.af.Abort() }

// write streams the header and every tensor into out and verifies it. It is one
// pipeline of stages, each on its own goroutine, that a chunk passes in order: read from the
// source, written, read back from the file and compared byte for byte with what was written
// (not for a staging copy), hashed into the output file's SHA-256 (and into its parts' with
// a part size), hashed into its tensor's SHA-256, and returned to the pool. With the source
// file's digest (taken by File), reading, writing and the digests overlap across cores, with
// at most chunksInFlight chunks alive. It returns the tensors' digests and the output's
// (SHA256, and the parts').
// Progress goes to rep as the writing phase: bytes that passed the output's digest, and tensors
// whose last byte did.
func (p *plan) write(ctx context.Context, out *os.File, rep *reporter) ([]string, *Output, error) {
	rep.phase(PhaseWriting, p.layout.Size, len(p.layout.Tensors))
	var parts *partHasher
	if p.partSize > 0 {
		var err error
		if parts, err = newPartHasher(p.partSize); err != nil {
			return nil, nil, err
		}
		parts.write(p.layout.Header)
	}
	// The header goes first and is checked at once.
	w := &outWriter{f: out, lazy: p.staging}
	if err := w.write(p.layout.Header); err != nil {
		return nil, nil, err
	}
	buf := make([]byte, chunkSize)
	if !p.staging {
		if err := reread(ctx, out, 0, p.layout.Header, buf); err != nil {
			return nil, nil, err
		}
	}
	hdr := int64(len(p.layout.Header))
	cnt := &counter{r: rep, header: hdr, ends: make([]int64, len(p.layout.Tensors))}
	for i, t := range p.layout.Tensors {
		cnt.ends[i] = t.End
	}
	cnt.verified(0)
	g, gctx := errgroup.WithContext(ctx)
	pool := newPool()
	produced := make(chan chunk, chunksInFlight)
	g.Go(func() error { return p.produce(gctx, pool, produced) })
	written := stage(gctx, g, produced, func(c []byte, _ int64) error { return w.write(c) })
	compared := written
	if !p.staging {
		compared = stage(gctx, g, written, func(c []byte, off int64) error { return reread(gctx, out, hdr+off, c, buf) })
	}
	whole := sha256.New()
	whole.Write(p.layout.Header)
	hashed := stage(gctx, g, compared, func(c []byte, off int64) error {
		whole.Write(c)
		cnt.verified(off + int64(len(c)))
		return nil
	})
	if parts != nil {
		hashed = stage(gctx, g, hashed, func(c []byte, _ int64) error {
			parts.write(c)
			return nil
		})
	}
	d := digestTensors(g, p.layout.Tensors, hashed, pool)
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	rep.done()
	o := &Output{SHA256: hex.EncodeToString(whole.Sum(nil))}
	if parts != nil {
		o.PartSize, o.PartSHA256 = p.partSize, parts.finish()
	}
	return d.finish(), o, nil
}

// checkFree refuses a conversion that would leave less than reserve bytes free on the file
// system of out (the empty output file; the scratch files go to the same directory), counting
// the planned output and scratch bytes as written.
func (p *plan) checkFree(out *os.File, reserve int64) error {
	if reserve <= 0 {
		return nil
	}
	free, known, err := freeBytes(out)
	if err != nil {
		return fault.Wrap(fault.Internal, "", err, "free space of the output's file system")
	}
	if !known {
		return fault.New(fault.Internal, "", "free space of the output's file system is unknown on this system; cannot keep %d bytes free", reserve)
	}
	if need := p.layout.Size + p.scratchBytes; free-need < reserve {
		return fault.New(fault.Limit, "", "output of %d bytes (and %d scratch bytes) would leave less than %d bytes free on its file system (%d free)",
			p.layout.Size, p.scratchBytes, reserve, free)
	}
	return nil
}

// stage starts a goroutine in g that applies do to every chunk from in and passes it on, in
// order, on the channel it returns; that channel is closed when in is, or at do's first error.
func stage(ctx context.Context, g *errgroup.Group, in <-chan chunk, do func(buf []byte, off int64) error) <-chan chunk {
	out := make(chan chunk, chunksInFlight)
	g.Go(func() error {
		defer close(out)
		for c := range in {
			if err := do(c.buf, c.off); err != nil {
				return err
			}
			select {
			case out <- c:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	return out
}

// reread reads len(want) bytes of f at off back through buf and requires them to equal want.
func reread(ctx context.Context, f io.ReaderAt, off int64, want []byte, buf []byte) error {
	for len(want) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(len(buf), len(want))]
		if _, err := f.ReadAt(b, off); err != nil {
			return fault.Wrap(fault.Internal, "", err, "re-read output")
		}
		if !bytes.Equal(b, want[:len(b)]) {
			return fault.New(fault.Internal, "", "verify output: the %d bytes at offset %d differ from those written", len(b), off)
		}
		off += int64(len(b))
		want = want[len(b):]
	}
	return nil
}

// Scan builds the same plan as File without writing anything: ScanFD on src opened with
// OpenInput. When the file was judged, the manifest is returned, its Verdict and Error saying
// whether it is safe, and the error is the classified reason it is not (nil when safe); when
// the scan could not run (the file cannot be opened or read, or is not a regular file), the
// manifest is nil.
func Scan(ctx context.Context, src string, opts Options) (*Manifest, error) {
	f, err := OpenInput(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ScanFD(ctx, f, opts)
}

// ScanFD scans the checkpoint read from src, opened with OpenInput; see Scan. Over
// Limits.Timeout it stops with a limit fault.
func ScanFD(ctx context.Context, src *os.File, opts Options) (*Manifest, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel, over := timeLimit(ctx, opts.Limits)
	defer cancel()
	m := newManifest(src.Name(), opts)
	rep := &reporter{fn: opts.Progress}
	rep.phase(PhaseScanning, 0, 0)
	_, err := open(src, opts, m)
	if err = over(err); err != nil && fault.KindOf(err) == fault.Internal {
		return nil, err
	}
	return judged(ctx, src, m, err, rep, over)
}

// judged completes the manifest of a file that open judged, err being the verdict (nil for
// safe): the source's digest, which a report names whatever the verdict, the verdict and the
// error. Only a digest that fails leaves the manifest out.
func judged(ctx context.Context, src *os.File, m *Manifest, err error, rep *reporter, over func(error) error) (*Manifest, error) {
	rep.phase(PhaseHashing, m.Source.Size, 0)
	sum := hashReader(ctx, countingReader{r: io.NewSectionReader(src, 0, m.Source.Size), rep: rep})
	if sum.err != nil {
		return nil, over(sum.err)
	}
	rep.done()
	m.Source.SHA256 = sum.sum
	if err != nil {
		m.Verdict = verdictOf(err)
		m.Error = &ErrorInfo{Type: fault.KindOf(err), Detail: err.Error()}
		return m, err
	}
	m.Verdict = "safe"
	return m, nil
}

// verdictOf names the scan verdict for a classified error.
func verdictOf(err error) string {
	switch k := fault.KindOf(err); k {
	case fault.Unsafe, fault.Unsupported:
		return k.String()
	}
	return "malformed"
}

type result struct {
	sum string
	err error
}

// hashReader returns the hex SHA-256 of everything r yields.
func hashReader(ctx context.Context, r io.Reader) result {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return result{err: err}
		}
		n, err := r.Read(buf)
		h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			return result{sum: hex.EncodeToString(h.Sum(nil))}
		}
		if err != nil {
			return result{err: fault.Wrap(fault.Internal, "", err, "read input")}
		}
	}
}

// writebackEvery is how much output accumulates before its disk writeback is started: the
// final fsync then finds little left to flush, and disk writes overlap the hashing.
const writebackEvery = 256 << 20

// writePiece bounds one write system call. Linux 6.x page caches with large folios copy a
// 1 MiB write several times slower than four 256 KiB ones (measured: 1 GiB in 1.2-2.5 s of
// system time against 0.2-0.3 s), so writes go to the kernel in pieces of this size.
const writePiece = 256 << 10

// outWriter writes a file sequentially in writePiece system calls and starts the disk writeback
// every writebackEvery bytes, unless lazy (a staging copy).
type outWriter struct {
	f             *os.File
	lazy          bool
	written, sent int64
}

func (w *outWriter) write(p []byte) error {
	for len(p) > 0 {
		n, err := w.f.Write(p[:min(len(p), writePiece)])
		w.written += int64(n)
		if err != nil {
			return fault.Wrap(fault.Internal, "", err, "write output")
		}
		p = p[n:]
	}
	if !w.lazy && w.written-w.sent >= writebackEvery {
		startWriteback(w.f, w.sent, w.written-w.sent)
		w.sent = w.written
	}
	return nil
}
