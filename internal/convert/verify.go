package convert

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"os"
	"slices"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/safetensors"
)

// verify checks the written file after it was synced: the strict reader must accept its header,
// which must be the one planned (the bytes behind it were compared as they were re-read).
func (p *plan) verify(out *os.File) error {
	sf, err := safetensors.Read(out, p.layout.Size, p.lim.MaxHeaderBytes)
	if err != nil {
		return fault.Wrap(fault.Internal, "", err, "verify output")
	}
	if sf.DataStart != int64(len(p.layout.Header)) || len(sf.Tensors) != len(p.layout.Tensors) {
		return fault.New(fault.Internal, "", "verify output: header differs from the plan")
	}
	byName := make(map[string]int, len(sf.Tensors))
	for i, t := range sf.Tensors {
		byName[t.Name] = i
	}
	for _, planned := range p.layout.Tensors {
		j, ok := byName[planned.Name]
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

// digester computes, over a safetensors file (or its data section, with dataStart 0) fed to it
// in order, the SHA-256 of each tensor's bytes and, when asked, of the whole file; the two run
// in parallel on each piece.
type digester struct {
	tensors   []safetensors.Tensor // in file order
	dataStart int64
	whole     hash.Hash
	per       hash.Hash
	sums      []string
	ti        int
	pos       int64 // file offset of the next byte
	empty     string
	done      chan struct{}
}

func newDigester(tensors []safetensors.Tensor, dataStart int64, whole bool) *digester {
	d := &digester{tensors: tensors, dataStart: dataStart, per: sha256.New(),
		sums: make([]string, len(tensors)), done: make(chan struct{})}
	if whole {
		d.whole = sha256.New()
	}
	d.empty = hex.EncodeToString(d.per.Sum(nil))
	return d
}

// write consumes the next bytes of the file.
func (d *digester) write(b []byte) {
	if d.whole != nil {
		go func(all []byte) {
			d.whole.Write(all)
			d.done <- struct{}{}
		}(b)
		defer func() { <-d.done }()
	}
	abs := d.pos
	d.pos += int64(len(b))
	if abs < d.dataStart {
		k := min(int64(len(b)), d.dataStart-abs)
		b, abs = b[k:], abs+k
	}
	for len(b) > 0 {
		d.skipEmpty()
		if d.ti == len(d.tensors) {
			break
		}
		t := d.tensors[d.ti]
		rel := abs - d.dataStart
		take := min(int64(len(b)), t.End-rel)
		d.per.Write(b[:take])
		b, abs = b[take:], abs+take
		if rel+take == t.End {
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

// finish returns the whole-file digest (empty when not asked for) and the per-tensor digests
// in file order.
func (d *digester) finish() (string, []string) {
	d.skipEmpty()
	if d.whole == nil {
		return "", d.sums
	}
	return hex.EncodeToString(d.whole.Sum(nil)), d.sums
}

// digestFile reads a safetensors file once, sequentially, and returns the SHA-256 of the whole
// file and of each tensor (in sf.Tensors order, which Read sorted by offset and validated to
// cover the data section exactly).
func digestFile(ctx context.Context, f io.ReaderAt, sf *safetensors.File) (string, []string, error) {
	d := newDigester(sf.Tensors, sf.DataStart, true)
	if err := readThrough(ctx, f, 0, sf.Size, d, make([]byte, chunkSize)); err != nil {
		return "", nil, err
	}
	whole, sums := d.finish()
	return whole, sums, nil
}

// readThrough feeds bytes [from, to) of f to d, reading through buf.
func readThrough(ctx context.Context, f io.ReaderAt, from, to int64, d *digester, buf []byte) error {
	for pos := from; pos < to; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := f.ReadAt(buf[:min(int64(len(buf)), to-pos)], pos)
		if err != nil && !(err == io.EOF && int64(n) == to-pos) {
			return fault.Wrap(fault.Internal, "", err, "re-read output")
		}
		d.write(buf[:n])
		pos += int64(n)
	}
	return nil
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
// and bytes.
func Verify(ctx context.Context, path, source string, opts Options) (*Report, error) {
	lim := opts.Limits.OrDefault()
	f, err := os.Open(path)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, "", err, "open")
	}
	defer f.Close()
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
	rep := &Report{Path: path, Size: st.Size(), SHA256: fileSum, Tensors: make([]Tensor, len(sf.Tensors))}
	for i, t := range sf.Tensors {
		rep.Tensors[i] = Tensor{Name: t.Name, DType: t.DType.String(), Shape: nonNil(t.Shape), Bytes: t.End - t.Begin,
			DataOffsets: &[2]int64{t.Begin, t.End}, SHA256: sums[i]}
	}
	if source == "" {
		return rep, nil
	}
	m := newManifest(source, opts)
	sfd, p, err := open(source, opts, m)
	if err != nil {
		return nil, err
	}
	defer sfd.Close()
	p.scratchDir = opts.ScratchDir
	if p.scratchDir == "" {
		p.scratchDir = os.TempDir()
	}
	want, err := p.sourceDigests(ctx)
	if err != nil {
		return nil, err
	}
	if len(p.layout.Tensors) != len(sf.Tensors) {
		return nil, fault.New(fault.Malformed, "", "file has %d tensors, the source gives %d", len(sf.Tensors), len(p.layout.Tensors))
	}
	byName := map[string]int{}
	for i, t := range sf.Tensors {
		byName[t.Name] = i
	}
	for i, t := range p.layout.Tensors {
		j, ok := byName[t.Name]
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
