package convert

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"slices"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/safetensors"
)

// verify re-reads the written file with the strict reader, checks that its header is the one
// planned, and compares every tensor's SHA-256 with the digest computed from the source. It
// returns the SHA-256 of the whole output file, computed in the same pass.
func (p *plan) verify(ctx context.Context, out *os.File, want []string) (string, error) {
	sf, err := safetensors.Read(out, p.layout.Size, p.lim.MaxHeaderBytes)
	if err != nil {
		return "", fault.Wrap(fault.Internal, "", err, "verify output")
	}
	if sf.DataStart != int64(len(p.layout.Header)) || len(sf.Tensors) != len(p.layout.Tensors) {
		return "", fault.New(fault.Internal, "", "verify output: header differs from the plan")
	}
	fileSum, got, err := digestFile(ctx, out, sf)
	if err != nil {
		return "", err
	}
	byName := make(map[string]int, len(sf.Tensors))
	for i, t := range sf.Tensors {
		byName[t.Name] = i
	}
	for i, planned := range p.layout.Tensors {
		j, ok := byName[planned.Name]
		if !ok {
			return "", fault.New(fault.Internal, "", "verify output: tensor %q is missing", planned.Name)
		}
		t := sf.Tensors[j]
		if t.Begin != planned.Begin || t.End != planned.End || t.DType != planned.DType || !slices.Equal(t.Shape, planned.Shape) {
			return "", fault.New(fault.Internal, "", "verify output: tensor %q differs from the plan", t.Name)
		}
		if got[j] != want[i] {
			return "", fault.New(fault.Internal, "", "verify output: tensor %q has SHA-256 %s, the source gave %s", t.Name, got[j], want[i])
		}
	}
	return fileSum, nil
}

// digestFile reads a safetensors file once, sequentially, and returns the SHA-256 of the whole
// file and of each tensor (in sf.Tensors order, which Read sorted by offset and validated to
// cover the data section exactly). The two digests are computed in parallel on each chunk.
func digestFile(ctx context.Context, f io.ReaderAt, sf *safetensors.File) (string, []string, error) {
	whole, per := sha256.New(), sha256.New()
	emptySum := hex.EncodeToString(per.Sum(nil))
	sums := make([]string, len(sf.Tensors))
	ti := 0
	perTensor := func(b []byte, abs int64) {
		if abs < sf.DataStart {
			k := min(int64(len(b)), sf.DataStart-abs)
			b, abs = b[k:], abs+k
		}
		for len(b) > 0 {
			for ti < len(sf.Tensors) && sf.Tensors[ti].Begin == sf.Tensors[ti].End {
				sums[ti] = emptySum
				ti++
			}
			if ti == len(sf.Tensors) {
				return
			}
			rel := abs - sf.DataStart
			take := min(int64(len(b)), sf.Tensors[ti].End-rel)
			per.Write(b[:take])
			b, abs = b[take:], abs+take
			if rel+take == sf.Tensors[ti].End {
				sums[ti] = hex.EncodeToString(per.Sum(nil))
				per.Reset()
				ti++
			}
		}
	}
	buf := make([]byte, chunkSize)
	wholeDone := make(chan struct{})
	for pos := int64(0); pos < sf.Size; {
		if err := ctx.Err(); err != nil {
			return "", nil, err
		}
		n, err := f.ReadAt(buf[:min(int64(len(buf)), sf.Size-pos)], pos)
		if err != nil && !(err == io.EOF && int64(n) == sf.Size-pos) {
			return "", nil, fault.Wrap(fault.Internal, "", err, "read output")
		}
		b := buf[:n]
		go func() {
			whole.Write(b)
			wholeDone <- struct{}{}
		}()
		perTensor(b, pos)
		<-wholeDone
		pos += int64(n)
	}
	for ; ti < len(sf.Tensors); ti++ {
		sums[ti] = emptySum // zero-size tensors at the very end
	}
	return hex.EncodeToString(whole.Sum(nil)), sums, nil
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
	p.scratchDir = os.TempDir()
	want, err := p.pump(ctx, io.Discard)
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
