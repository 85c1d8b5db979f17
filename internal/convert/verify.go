package convert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"os"
	"slices"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/safetensors"
	"golang.org/x/sync/errgroup"
)

// checkHeader requires the strict reader to accept the planned header and to find in it exactly
// the planned tensors: a check of the planner. The header bytes in the file need no second read;
// write compares them with these as it reads them back.
func (p *plan) checkHeader() error {
	sf, err := safetensors.Read(bytes.NewReader(p.layout.Header), p.layout.Size, p.lim.MaxHeaderBytes)
	if err != nil {
		return fault.Wrap(fault.Internal, "", err, "verify output")
	}
	if sf.DataStart != int64(len(p.layout.Header)) || len(sf.Tensors) != len(p.layout.Tensors) {
		return fault.New(fault.Internal, "", "verify output: header differs from the plan")
	}
	idx := tensorIndex{tensors: sf.Tensors}
	for i, planned := range p.layout.Tensors {
		j, ok := idx.find(i, planned.Name)
		if !ok {
			return fault.New(fault.Internal, "", "verify output: tensor %q is missing", planned.Name)
		}
		t := sf.Tensors[j]
		if t.Begin != planned.Begin || t.End != planned.End || t.DType != planned.DType || !slices.Equal(t.Shape, planned.Shape) {
			return fault.New(fault.Internal, "", "verify output: tensor %q differs from the plan", t.Name)
		}
	}
	return nil
}

// tensorIndex finds planned tensors in a file's list. A file this converter wrote lists them
// in the plan's order, so the i-th planned tensor is looked for at i first; the index by name
// (a million entries for a million tensors) is built only for a file that differs.
type tensorIndex struct {
	tensors []safetensors.Tensor
	byName  map[string]int
}

// find returns the position of the tensor called name, the i-th of the plan.
func (x *tensorIndex) find(i int, name string) (int, bool) {
	if i < len(x.tensors) && x.tensors[i].Name == name {
		return i, true
	}
	if x.byName == nil {
		x.byName = make(map[string]int, len(x.tensors))
		for k, t := range x.tensors {
			x.byName[t.Name] = k
		}
	}
	j, ok := x.byName[name]
	return j, ok
}

// digester computes the SHA-256 of each tensor's bytes over a data section fed to it in order.
type digester struct {
	tensors []safetensors.Tensor // in file order, offsets relative to the data section
	per     hash.Hash
	sums    []string
	ti      int
	pos     int64 // data offset of the next byte
	empty   string
}

func newDigester(tensors []safetensors.Tensor) *digester {
	d := &digester{tensors: tensors, per: sha256.New(), sums: make([]string, len(tensors))}
	d.empty = hex.EncodeToString(d.per.Sum(nil))
	return d
}

// write consumes the next bytes of the data section.
func (d *digester) write(b []byte) {
	for len(b) > 0 {
		d.skipEmpty()
		if d.ti == len(d.tensors) {
			break
		}
		t := d.tensors[d.ti]
		take := min(int64(len(b)), t.End-d.pos)
		d.per.Write(b[:take])
		b, d.pos = b[take:], d.pos+take
		if d.pos == t.End {
			d.sums[d.ti] = hex.EncodeToString(d.per.Sum(nil))
			d.per.Reset()
			d.ti++
		}
	}
}

// skipEmpty records the digests of zero-size tensors at the current position.
func (d *digester) skipEmpty() {
	for d.ti < len(d.tensors) && d.tensors[d.ti].Begin == d.tensors[d.ti].End {
		d.sums[d.ti] = d.empty
		d.ti++
	}
}

// finish returns the per-tensor digests in file order.
func (d *digester) finish() []string {
	d.skipEmpty()
	return d.sums
}

// digestTensors starts the last stage of a stream in g: it hashes each chunk of the data
// section from in into its tensors' SHA-256 digests and returns the buffer to pool. The digests
// are ready when g is done.
func digestTensors(g *errgroup.Group, tensors []safetensors.Tensor, in <-chan chunk, pool chan<- []byte) *digester {
	d := newDigester(tensors)
	g.Go(func() error {
		for c := range in {
			d.write(c.buf)
			pool <- c.buf[:0]
		}
		return nil
	})
	return d
}

// digestFile reads a safetensors file once, sequentially, and returns the SHA-256 of the whole
// file and of each tensor (in sf.Tensors order, which Read sorted by offset and validated to
// cover the data section exactly). Reading, the file digest and the tensor digests are stages
// that overlap, as in a conversion.
func digestFile(ctx context.Context, f io.ReaderAt, sf *safetensors.File) (string, []string, error) {
	whole := sha256.New()
	if _, err := io.Copy(whole, io.NewSectionReader(f, 0, sf.DataStart)); err != nil {
		return "", nil, fault.Wrap(fault.Internal, "", err, "read header")
	}
	g, gctx := errgroup.WithContext(ctx)
	pool := newPool()
	chunks := make(chan chunk, chunksInFlight)
	g.Go(func() error {
		defer close(chunks)
		for off, size := int64(0), sf.Size-sf.DataStart; off < size; {
			var b []byte
			select {
			case b = <-pool:
			case <-gctx.Done():
				return gctx.Err()
			}
			b = b[:min(int64(cap(b)), size-off)]
			if _, err := f.ReadAt(b, sf.DataStart+off); err != nil {
				return fault.Wrap(fault.Internal, "", err, "read data")
			}
			select {
			case chunks <- chunk{off: off, buf: b}:
			case <-gctx.Done():
				return gctx.Err()
			}
			off += int64(len(b))
		}
		return nil
	})
	hashed := stage(gctx, g, chunks, func(c []byte, _ int64) error { whole.Write(c); return nil })
	d := digestTensors(g, sf.Tensors, hashed, pool)
	if err := g.Wait(); err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(whole.Sum(nil)), d.finish(), nil
}

// Report is the result of Verify.
type Report struct {
	Path    string   `json:"path"`
	Size    int64    `json:"size"`
	SHA256  string   `json:"sha256"`
	Tensors []Tensor `json:"tensors"`
	// Source is set when the file was compared against a source checkpoint.
	Source *Source `json:"source,omitempty"`
}

// Verify validates a safetensors file strictly and returns its digests. With source set it also
// rebuilds every tensor from the source checkpoint and requires the same names, dtypes, shapes
// and bytes. It is VerifyFD on the files opened with OpenInput.
func Verify(ctx context.Context, path, source string, opts Options) (*Report, error) {
	f, err := OpenInput(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var src *os.File
	if source != "" {
		if src, err = OpenInput(source); err != nil {
			return nil, err
		}
		defer src.Close()
	}
	return VerifyFD(ctx, f, src, opts)
}

// VerifyFD verifies the safetensors file read from f, and compares it with the checkpoint read
// from source unless that is nil, both opened with OpenInput; see Verify. Deflated records of
// the source that need random access are inflated into opts.ScratchDir (default os.TempDir()).
// Over Limits.Timeout it stops with a limit fault.
func VerifyFD(ctx context.Context, f, source *os.File, opts Options) (*Report, error) {
	ctx, cancel, over := timeLimit(ctx, opts.Limits)
	defer cancel()
	rep, err := verifyFD(ctx, f, source, opts)
	if err != nil {
		return nil, over(err)
	}
	return rep, nil
}

func verifyFD(ctx context.Context, f, source *os.File, opts Options) (*Report, error) {
	lim := opts.Limits.OrDefault()
	st, err := f.Stat()
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "stat")
	}
	sf, err := safetensors.Read(f, st.Size(), lim.MaxHeaderBytes)
	if err != nil {
		return nil, err
	}
	fileSum, sums, err := digestFile(ctx, f, sf)
	if err != nil {
		return nil, err
	}
	rep := &Report{Path: f.Name(), Size: st.Size(), SHA256: fileSum, Tensors: make([]Tensor, len(sf.Tensors))}
	for i, t := range sf.Tensors {
		rep.Tensors[i] = Tensor{Name: t.Name, DType: t.DType.String(), Shape: nonNil(t.Shape), Bytes: t.End - t.Begin,
			DataOffsets: &[2]int64{t.Begin, t.End}, SHA256: sums[i]}
	}
	if source == nil {
		return rep, nil
	}
	m := newManifest(source.Name(), opts)
	p, err := open(source, opts, m)
	if err != nil {
		return nil, err
	}
	p.scratchDir = scratchDir(opts)
	want, err := p.sourceDigests(ctx)
	if err != nil {
		return nil, err
	}
	if len(p.layout.Tensors) != len(sf.Tensors) {
		return nil, fault.New(fault.Malformed, "", "file has %d tensors, the source gives %d", len(sf.Tensors), len(p.layout.Tensors))
	}
	idx := tensorIndex{tensors: sf.Tensors}
	for i, t := range p.layout.Tensors {
		j, ok := idx.find(i, t.Name)
		if !ok {
			return nil, fault.New(fault.Malformed, "", "tensor %q of the source is missing", t.Name)
		}
		got := sf.Tensors[j]
		if got.DType != t.DType || !slices.Equal(got.Shape, t.Shape) {
			return nil, fault.New(fault.Malformed, "", "tensor %q is %s%v, the source gives %s%v", t.Name, got.DType, got.Shape, t.DType, t.Shape)
		}
		if sums[j] != want[i] {
			return nil, fault.New(fault.Malformed, "", "tensor %q differs from the source (SHA-256 %s, source %s)", t.Name, sums[j], want[i])
		}
	}
	rep.Source = &m.Source
	return rep, nil
}
