// Package safetensors lays out and validates safetensors file headers: Plan computes the exact
// header and tensor offsets the reference writer (huggingface/safetensors, tensor.rs) would
// produce for a set of named, typed, shaped tensors, and Read strictly validates an existing
// file's header the way the reference reader does, and more strictly.
//
// The package only ever deals in headers. It must never allocate, read or copy anything
// proportional to tensor data: Plan sees names, dtypes and shapes only, and Read reads exactly
// the 8+N header bytes through an io.ReaderAt. Copying tensor bytes is the caller's streaming
// step. It must never panic on hostile input, never trust a length or offset without checked
// arithmetic, and never accept a header that the reference reader would refuse.
//
// Errors on bad input are *fault.Error values: fault.Malformed for anything the reference
// rejects or that is ambiguous (duplicate keys), fault.Limit for headers over the size limit and
// shapes whose byte size overflows, fault.Unsupported for dtypes the reference knows but this
// converter does not write (F4, F6_*, F8_E8M0, the FNUZ float8s).
package safetensors

import (
	"strconv"
	"unicode/utf8"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/fault"
)

// referenceMaxHeader is MAX_HEADER_SIZE in the reference implementation: a header of more than
// 100,000,000 bytes (decimal) is refused by every reader, so neither Plan nor Read goes above it
// whatever limit the caller passes.
const referenceMaxHeader = 100_000_000

// metadataKey is the reserved top-level key holding the string→string metadata map.
const metadataKey = "__metadata__"

// faultEntry names the part of the file every error refers to; offsets in errors are byte
// offsets from the start of the file (the JSON text starts at offset 8).
const faultEntry = "safetensors header"

// Entry is a tensor to lay out.
type Entry struct {
	Name  string
	DType dtype.DType
	Shape []int64
}

// Tensor is a laid-out tensor; Begin/End are offsets relative to the data section (End
// exclusive), so the tensor occupies file bytes [DataStart+Begin, DataStart+End).
type Tensor struct {
	Name  string
	DType dtype.DType
	Shape []int64
	Begin int64
	End   int64
}

// effectiveLimit returns the header size limit actually enforced: maxHeader, except that a
// non-positive value or one above the reference limit means the reference limit.
func effectiveLimit(maxHeader int64) int64 {
	if maxHeader <= 0 || maxHeader > referenceMaxHeader {
		return referenceMaxHeader
	}
	return maxHeader
}

// tensorBytes returns the byte size of a tensor of dtype d and the given shape, computed the
// way the reference reader validates it (usize arithmetic on a 64-bit host): the element count
// with checked multiplication (an empty shape has one element), then the size in bits with a
// checked multiplication. ok is false on overflow of either.
func tensorBytes[T int64 | uint64](d dtype.DType, shape []T) (n uint64, ok bool) {
	nelem := uint64(1)
	for _, dim := range shape {
		u := uint64(dim)
		if u != 0 && nelem > ^uint64(0)/u {
			return 0, false
		}
		nelem *= u
	}
	bits := uint64(d.Size()) * 8
	if bits != 0 && nelem > ^uint64(0)/bits {
		return 0, false
	}
	return nelem * bits / 8, true
}

// nameForError quotes a tensor name or metadata key for an error message, cut short so that a
// hostile megabyte-long name does not end up in logs.
func nameForError(s string) string {
	const max = 96
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

func malformed(format string, args ...any) *fault.Error {
	return fault.New(fault.Malformed, faultEntry, format, args...)
}

func malformedAt(offset int64, format string, args ...any) *fault.Error {
	return fault.At(fault.Malformed, faultEntry, offset, format, args...)
}
