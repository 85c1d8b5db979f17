// Package limits holds every bound the converter enforces on untrusted input, in one struct, so
// that each can be named in an error, configured by a flag or an environment variable, and
// reviewed in one place.
//
// The defaults admit any real model up to 1 TB while keeping a hostile file's cost bounded. The
// parser's memory follows MaxPickleBytes, MaxObjects and MaxWalkNodes, and the sandbox child's
// address space is derived from them (about 13 GiB at the defaults): raise them only on a
// machine with the memory for it.
package limits

import (
	"errors"
	"flag"
	"math"
	"strconv"
	"time"

	"github.com/ptsafe/converter/internal/envflag"
)

// Limits bounds the resources one conversion may consume. A zero field means "use the default";
// use Default() to get a fully populated value.
type Limits struct {
	// MaxFileBytes bounds the size of an input file.
	MaxFileBytes int64
	// MaxPickleBytes bounds one pickle stream (a zip's data.pkl, one legacy pickle).
	MaxPickleBytes int64
	// MaxTensors bounds the number of tensors (and of storages) in one checkpoint. Real models
	// hold at most tens of thousands; the default (250,000) leaves a wide margin and agrees
	// with MaxObjects at the 14-30 objects torch writes per tensor.
	MaxTensors int
	// MaxDims bounds the rank of one tensor.
	MaxDims int
	// MaxOutputBytes bounds the total tensor bytes written, whatever the input size.
	MaxOutputBytes int64
	// MaxOutputRatio and MaxOutputSlack bound the output relative to the input: the output file
	// (header and tensor bytes, broadcast views at their full size) may take at most
	// MaxOutputRatio x the input size + MaxOutputSlack bytes, and so may the deflated records
	// inflated to scratch files. Real checkpoints write about their own size; a hostile one
	// cannot turn a few bytes into gigabytes.
	MaxOutputRatio int
	MaxOutputSlack int64
	// MaxNesting bounds container nesting in a pickle and the depth of the object graph walk.
	MaxNesting int
	// MaxMemo bounds the number of memo entries in one pickle.
	MaxMemo int
	// MaxObjects bounds the values one pickle creates: every constant, number, string, container,
	// global and call's result an opcode pushes (DUP and memo GETs, which push a value again,
	// are not counted). The parser's memory grows with this count, not with the pickle's
	// length: ten million one-byte None pushes cost more than a 1 GiB string. A tensor in a
	// torch state dict takes 14-30 values (a training checkpoint with optimizer state about
	// 56), so the default admits MaxTensors tensors with room to spare.
	MaxObjects int
	// MaxMarks bounds the number of MARK opcodes that may be open at once.
	MaxMarks int
	// MaxLongBytes bounds the encoded length of a LONG1/LONG4/text INT/LONG integer.
	MaxLongBytes int
	// MaxWalkNodes bounds the number of object-graph nodes visited (paths, not unique nodes),
	// so a DAG that reaches one tensor through 2^100 paths ends quickly. Each path costs memory
	// even through shared objects; the default is a few times what MaxTensors tensors need.
	MaxWalkNodes int
	// MaxZipEntries bounds the number of entries in a zip central directory.
	MaxZipEntries int
	// MaxHeaderBytes bounds a safetensors header (the reference reader refuses > 100,000,000).
	MaxHeaderBytes int64
	// MaxDroppedListed bounds the dropped (non-tensor) leaves a manifest lists one by one; the
	// rest are only counted, so a small pickle of millions of None leaves makes a small manifest.
	MaxDroppedListed int
	// Timeout bounds the wall time of one conversion.
	Timeout time.Duration
}

// Default returns the limits used when nothing is configured.
func Default() Limits {
	return Limits{
		MaxFileBytes:     1 << 40,   // 1 TiB
		MaxPickleBytes:   512 << 20, // torch writes ~100 bytes of pickle per tensor
		MaxTensors:       250_000,
		MaxDims:          64,
		MaxOutputBytes:   1 << 40,
		MaxOutputRatio:   16,
		MaxOutputSlack:   64 << 20,
		MaxNesting:       1000,
		MaxMemo:          1 << 24,
		MaxObjects:       8_000_000, // 32 per tensor at MaxTensors; torch writes 14-30 (56 with optimizer state)
		MaxMarks:         1 << 16,
		MaxLongBytes:     64,
		MaxWalkNodes:     10_000_000,
		MaxZipEntries:    10_000_000,
		MaxHeaderBytes:   100_000_000,
		MaxDroppedListed: 1000,
		Timeout:          6 * time.Hour,
	}
}

// OrDefault returns l with every zero field replaced by its default.
func (l Limits) OrDefault() Limits {
	d := Default()
	pick64 := func(v *int64, dv int64) {
		if *v == 0 {
			*v = dv
		}
	}
	pick := func(v *int, dv int) {
		if *v == 0 {
			*v = dv
		}
	}
	pick64(&l.MaxFileBytes, d.MaxFileBytes)
	pick64(&l.MaxPickleBytes, d.MaxPickleBytes)
	pick(&l.MaxTensors, d.MaxTensors)
	pick(&l.MaxDims, d.MaxDims)
	pick64(&l.MaxOutputBytes, d.MaxOutputBytes)
	pick(&l.MaxOutputRatio, d.MaxOutputRatio)
	pick64(&l.MaxOutputSlack, d.MaxOutputSlack)
	pick(&l.MaxNesting, d.MaxNesting)
	pick(&l.MaxMemo, d.MaxMemo)
	pick(&l.MaxObjects, d.MaxObjects)
	pick(&l.MaxMarks, d.MaxMarks)
	pick(&l.MaxLongBytes, d.MaxLongBytes)
	pick(&l.MaxWalkNodes, d.MaxWalkNodes)
	pick(&l.MaxZipEntries, d.MaxZipEntries)
	pick64(&l.MaxHeaderBytes, d.MaxHeaderBytes)
	pick(&l.MaxDroppedListed, d.MaxDroppedListed)
	if l.Timeout == 0 {
		l.Timeout = d.Timeout
	}
	return l
}

// OutputBudget returns the most bytes MaxOutputRatio and MaxOutputSlack allow the output (or the
// scratch files) of an input of inputBytes to take; it saturates at math.MaxInt64 instead of
// overflowing.
func (l Limits) OutputBudget(inputBytes int64) int64 {
	ratio, slack, in := int64(max(l.MaxOutputRatio, 0)), max(l.MaxOutputSlack, 0), max(inputBytes, 0)
	if in > 0 && ratio > (math.MaxInt64-slack)/in {
		return math.MaxInt64
	}
	return ratio*in + slack
}

// RegisterFlags binds every limit to a flag named limit-NAME, whose default is l's value or,
// when set, the environment variable CONVERTER_LIMIT_NAME (see envflag). A limit must be
// positive, on the command line and in the environment alike. It returns an error if an
// environment value does not parse.
func (l *Limits) RegisterFlags(fs *flag.FlagSet, getenv func(string) string) error {
	flags := []struct {
		name, usage string
		v           flag.Value
	}{
		{"max-file-bytes", "largest input file in bytes", pos(&l.MaxFileBytes)},
		{"max-pickle-bytes", "largest single pickle stream in bytes", pos(&l.MaxPickleBytes)},
		{"max-tensors", "most tensors in one checkpoint", pos(&l.MaxTensors)},
		{"max-dims", "highest tensor rank", pos(&l.MaxDims)},
		{"max-output-bytes", "most tensor bytes written", pos(&l.MaxOutputBytes)},
		{"max-output-ratio", "most output (and scratch) bytes per input byte, beyond max-output-slack", pos(&l.MaxOutputRatio)},
		{"max-output-slack", "output (and scratch) bytes allowed beyond max-output-ratio x the input size", pos(&l.MaxOutputSlack)},
		{"max-nesting", "deepest container nesting in a pickle", pos(&l.MaxNesting)},
		{"max-memo", "most memo entries in one pickle", pos(&l.MaxMemo)},
		{"max-objects", "most values one pickle creates", pos(&l.MaxObjects)},
		{"max-marks", "most open MARKs in one pickle", pos(&l.MaxMarks)},
		{"max-long-bytes", "longest encoded pickle integer in bytes", pos(&l.MaxLongBytes)},
		{"max-walk-nodes", "most object-graph nodes visited", pos(&l.MaxWalkNodes)},
		{"max-zip-entries", "most zip entries", pos(&l.MaxZipEntries)},
		{"max-header-bytes", "largest safetensors header in bytes", pos(&l.MaxHeaderBytes)},
		{"max-dropped-listed", "most dropped non-tensor leaves listed in a manifest (the rest are counted)", pos(&l.MaxDroppedListed)},
		{"timeout", "longest conversion", (*positiveDuration)(&l.Timeout)},
	}
	names := make([]string, len(flags))
	for i, f := range flags {
		names[i] = "limit-" + f.name
		fs.Var(f.v, names[i], f.usage)
	}
	return envflag.Bind(fs, getenv, names...)
}

// positive is an integer flag that refuses zero and negative values.
type positive[T int | int64] struct{ p *T }

func pos[T int | int64](p *T) positive[T] { return positive[T]{p} }

func (v positive[T]) String() string {
	if v.p == nil { // the flag package's zero value, for help
		return "0"
	}
	return strconv.FormatInt(int64(*v.p), 10)
}

func (v positive[T]) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || int64(T(n)) != n {
		return errors.New("want a positive integer")
	}
	*v.p = T(n)
	return nil
}

// positiveDuration is a duration flag that refuses zero and negative values.
type positiveDuration time.Duration

func (p *positiveDuration) String() string { return time.Duration(*p).String() }

func (p *positiveDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return errors.New("want a positive duration")
	}
	*p = positiveDuration(d)
	return nil
}
