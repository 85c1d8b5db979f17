// Package synth writes synthetic PyTorch checkpoints that torch.load reads: state dicts of
// deterministic pseudo-random tensors in the zip format torch.save writes (stored, as torch does,
// or deflated, as a re-zipped file is) and in the legacy multi-pickle format.
//
// It exists for benchmarks and tests that need real checkpoints of any size without Python: a
// 4 GiB checkpoint is written in seconds, streaming, in constant memory. The pickles are byte for
// byte what torch 1.13's torch.save writes for the same state dict (checked against fixtures made
// by torch in testdata/), and the zip layout is miniz's as torch drives it: 64-byte aligned
// stored records padded with an "FB" extra field, data descriptors, ZIP64 end records always and
// ZIP64 extra fields from 4 GiB on.
//
// The tensor bytes are a cheap pseudo-random pattern, so hashes and compression behave as on
// real data; floating-point tensors never hold NaN or infinity, so comparisons with torch.equal
// hold. The package must never be used to write anything but test data: it does not pickle
// arbitrary objects.
package synth

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"strconv"

	"github.com/ptsafe/converter/internal/dtype"
)

// Format is a checkpoint container format.
type Format int

// The formats Write can produce.
const (
	// ZipStored is the zip format torch.save writes since 1.6: stored (uncompressed) records,
	// each tensor's bytes 64-byte aligned.
	ZipStored Format = iota
	// ZipDeflated is the zip format with every record deflated, as when a checkpoint has been
	// re-zipped by another tool. torch.load reads it; there is no alignment.
	ZipDeflated
	// Legacy is the multi-pickle format of torch.save before 1.6 (and of
	// _use_new_zipfile_serialization=False today).
	Legacy
)

var formatNames = [...]string{ZipStored: "zip", ZipDeflated: "zip-deflated", Legacy: "legacy"}

// String returns the format's name as ParseFormat accepts it.
func (f Format) String() string {
	if f < 0 || int(f) >= len(formatNames) {
		return "Format(" + strconv.Itoa(int(f)) + ")"
	}
	return formatNames[f]
}

// ParseFormat returns the format named "zip", "zip-deflated" (or "deflated") or "legacy".
func ParseFormat(s string) (Format, error) {
	if s == "deflated" {
		return ZipDeflated, nil
	}
	for f, n := range formatNames {
		if n == s {
			return Format(f), nil
		}
	}
	return 0, fmt.Errorf("synth: unknown format %q (want zip, zip-deflated or legacy)", s)
}

// ShapePolicy decides the shape of each tensor from its element count.
type ShapePolicy int

// The shape policies.
const (
	// ShapeMatrix gives every tensor two dimensions, as most weights of a transformer have:
	// [numel/cols, cols] with cols the largest power of two not above the square root.
	ShapeMatrix ShapePolicy = iota
	// ShapeFlat gives every tensor one dimension.
	ShapeFlat
	// ShapeMixed cycles through 2-D, 1-D, 3-D and 4-D (convolution-like [o, i, 3, 3]) shapes.
	ShapeMixed
)

var shapeNames = [...]string{ShapeMatrix: "matrix", ShapeFlat: "flat", ShapeMixed: "mixed"}

// String returns the policy's name as ParseShapePolicy accepts it.
func (s ShapePolicy) String() string {
	if s < 0 || int(s) >= len(shapeNames) {
		return "ShapePolicy(" + strconv.Itoa(int(s)) + ")"
	}
	return shapeNames[s]
}

// ParseShapePolicy returns the policy named "matrix", "flat" or "mixed".
func ParseShapePolicy(s string) (ShapePolicy, error) {
	for p, n := range shapeNames {
		if n == s {
			return ShapePolicy(p), nil
		}
	}
	return 0, fmt.Errorf("synth: unknown shape policy %q (want matrix, flat or mixed)", s)
}

// Spec describes a synthetic checkpoint. The zero value of every field but Tensors and
// TotalBytes means the default.
type Spec struct {
	// Format is the container format; the default is ZipStored.
	Format Format
	// Tensors is the number of tensors, named model.layers.N.weight for N from FirstLayer.
	Tensors int
	// FirstLayer is the N of the first tensor's name: the shards of one model name different
	// layers.
	FirstLayer int
	// TotalBytes is the target for the sum of the tensor sizes. Elements are split evenly; shape
	// policies other than ShapeFlat round each tensor down to a whole shape, so the result may
	// be slightly smaller.
	TotalBytes int64
	// DType is the element type of every tensor; the default is F16. Only dtypes torch pickles
	// with a typed storage class (torch.HalfStorage, ...) are supported.
	DType dtype.DType
	// Shapes is the shape policy; the default is ShapeMatrix.
	Shapes ShapePolicy
	// Seed selects the tensor contents. Equal specs give byte-identical files.
	Seed uint64
	// Prefix is the zip record prefix; the default is "archive", what torch.save uses when
	// saving to a file object.
	Prefix string
	// NoByteOrder leaves out the zip "byteorder" record, as torch before 2.1 does.
	NoByteOrder bool
}

// ManySmall returns the spec of the "100,000 small tensors" case: 100,000 float32 tensors of
// 1 KiB each, mixed shapes, in the default zip format.
func ManySmall(seed uint64) Spec {
	return Spec{Tensors: 100_000, TotalBytes: 100_000 << 10, DType: dtype.F32, Shapes: ShapeMixed, Seed: seed}
}

// storageClass is the torch typed storage class pickled for each supported dtype
// (torch/storage.py _dtype_to_storage_type_map).
var storageClass = map[dtype.DType]string{
	dtype.F64:  "DoubleStorage",
	dtype.F32:  "FloatStorage",
	dtype.F16:  "HalfStorage",
	dtype.BF16: "BFloat16Storage",
	dtype.I64:  "LongStorage",
	dtype.I32:  "IntStorage",
	dtype.I16:  "ShortStorage",
	dtype.I8:   "CharStorage",
	dtype.U8:   "ByteStorage",
	dtype.BOOL: "BoolStorage",
	dtype.C64:  "ComplexFloatStorage",
}

// Tensor is one tensor of a planned checkpoint: what a reader should find in the file.
type Tensor struct {
	Name  string
	DType dtype.DType
	Shape []int64
	// Key is the storage key: the zip record is <prefix>/data/<Key>; in legacy files it is the
	// decimal "address" torch writes.
	Key  string
	seed uint64
	// src, when set, replaces the generated content; the tests use it to reproduce torch-made
	// fixtures byte for byte.
	src func() io.Reader
	// view, when set, makes the tensor a view of another tensor's storage (see Views).
	view *view
}

// Numel returns the number of elements.
func (t *Tensor) Numel() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Size returns the number of data bytes.
func (t *Tensor) Size() int64 { return t.Numel() * int64(t.DType.Size()) }

// Content returns a reader of the tensor's bytes, as stored in the checkpoint (little-endian).
// Each call starts again from the first byte.
func (t *Tensor) Content() io.Reader {
	if t.src != nil {
		return t.src()
	}
	return &content{x: t.seed, mask: valueMask(t.DType), left: t.Size()}
}

// SHA256 returns the hex SHA-256 of the tensor's bytes, computed by generating them again.
func (t *Tensor) SHA256() string {
	h := sha256.New()
	if _, err := io.CopyBuffer(h, t.Content(), make([]byte, 1<<20)); err != nil {
		panic(err) // content never fails
	}
	return hex.EncodeToString(h.Sum(nil))
}

// legacyKeyBase makes legacy keys look like the heap addresses torch writes (str(storage._cdata))
// while keeping a fixed width, so their sorted order is the plan order.
const legacyKeyBase = 94_000_000_000_000

// Plan returns the tensors spec describes, in state-dict order, without writing anything.
func Plan(spec Spec) ([]Tensor, error) {
	dt := spec.DType
	if dt == dtype.Invalid {
		dt = dtype.F16
	}
	if _, ok := storageClass[dt]; !ok {
		return nil, fmt.Errorf("synth: dtype %v has no typed torch storage class", dt)
	}
	if spec.Format < 0 || int(spec.Format) >= len(formatNames) {
		return nil, fmt.Errorf("synth: unknown format %v", spec.Format)
	}
	if spec.Shapes < 0 || int(spec.Shapes) >= len(shapeNames) {
		return nil, fmt.Errorf("synth: unknown shape policy %v", spec.Shapes)
	}
	if spec.Tensors < 1 {
		return nil, fmt.Errorf("synth: %d tensors: want at least 1", spec.Tensors)
	}
	elems := spec.TotalBytes / int64(dt.Size())
	base, rem := elems/int64(spec.Tensors), elems%int64(spec.Tensors)
	if base < 1 {
		return nil, fmt.Errorf("synth: %d bytes cannot hold %d tensors of %v", spec.TotalBytes, spec.Tensors, dt)
	}
	out := make([]Tensor, spec.Tensors)
	for i := range out {
		n := base
		if int64(i) < rem {
			n++
		}
		key := strconv.Itoa(i)
		if spec.Format == Legacy {
			key = strconv.FormatUint(legacyKeyBase+uint64(i)*4096, 10)
		}
		out[i] = Tensor{
			Name:  "model.layers." + strconv.Itoa(spec.FirstLayer+i) + ".weight",
			DType: dt,
			Shape: shape(spec.Shapes, i, n),
			Key:   key,
			seed:  splitmix(spec.Seed ^ splitmix(uint64(i)+1)),
		}
	}
	return out, nil
}

func shape(p ShapePolicy, i int, n int64) []int64 {
	matrix := func(n int64) []int64 {
		cols := int64(1) << (bits.Len64(uint64(n)) / 2) // largest power of two <= sqrt(n), or just above
		for cols > 1 && cols*cols > n {
			cols >>= 1
		}
		return []int64{n / cols, cols}
	}
	switch p {
	case ShapeFlat:
		return []int64{n}
	case ShapeMixed:
		switch i % 4 {
		case 1:
			return []int64{n}
		case 2:
			if n >= 2 {
				return append([]int64{2}, matrix(n/2)...)
			}
		case 3:
			if n >= 9 {
				return append(matrix(n/9), 3, 3)
			}
		}
	}
	return matrix(n)
}

// Write writes the checkpoint spec describes to w. It streams: memory does not grow with the
// tensor sizes (the pickle, about 100 bytes per tensor, is built in memory). w receives small
// header writes and large data writes; wrap a file in a bufio.Writer, or use WriteFile.
func Write(w io.Writer, spec Spec) error {
	tensors, err := Plan(spec)
	if err != nil {
		return err
	}
	switch spec.Format {
	case Legacy:
		err = writeLegacy(w, tensors)
	default:
		prefix := spec.Prefix
		if prefix == "" {
			prefix = "archive"
		}
		err = writeZip(w, prefix, tensors, spec.Format == ZipDeflated, !spec.NoByteOrder)
	}
	if err != nil {
		return fmt.Errorf("synth: write %v checkpoint: %w", spec.Format, err)
	}
	return nil
}

// WriteFile writes the checkpoint spec describes to a new file at path, replacing any file
// there. On error the partial file is removed.
func WriteFile(path string, spec Spec) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("synth: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := Write(bw, spec); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	return nil
}

// content generates a tensor's bytes: splitmix64 words, little-endian, with a mask that clears
// the top exponent bit of every floating-point value (so no NaN or infinity appears) and keeps
// booleans 0 or 1.
type content struct {
	x     uint64
	mask  uint64
	left  int64
	pend  [8]byte
	npend int
}

func (c *content) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n := 0
	for c.npend > 0 && n < len(p) {
		p[n] = c.pend[8-c.npend]
		c.npend--
		n++
	}
	x, m := c.x, c.mask
	for ; n+8 <= len(p); n += 8 {
		x += 0x9e3779b97f4a7c15
		binary.LittleEndian.PutUint64(p[n:], mix(x)&m)
	}
	if n < len(p) {
		x += 0x9e3779b97f4a7c15
		binary.LittleEndian.PutUint64(c.pend[:], mix(x)&m)
		c.npend = 8
		for n < len(p) {
			p[n] = c.pend[8-c.npend]
			c.npend--
			n++
		}
	}
	c.x = x
	c.left -= int64(n)
	return n, nil
}

// mix is splitmix64's output function.
func mix(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func splitmix(x uint64) uint64 { return mix(x + 0x9e3779b97f4a7c15) }

// valueMask returns the 64-bit mask applied to every generated word for dtype d.
func valueMask(d dtype.DType) uint64 {
	switch d {
	case dtype.BOOL:
		return 0x0101010101010101
	case dtype.F8_E4M3, dtype.F8_E5M2, dtype.F16, dtype.BF16, dtype.F32, dtype.F64, dtype.C64:
		unit := d.SwapUnit() * 8 // bits per float component
		m := ^uint64(0)
		for b := unit - 2; b < 64; b += unit {
			m &^= 1 << b
		}
		return m
	}
	return ^uint64(0)
}

var errShortContent = errors.New("tensor content ended early")
