// Package dtype maps PyTorch element types (as named by legacy storage classes and by
// torch.<dtype> globals) to safetensors dtypes, with their sizes and the order in which the
// reference safetensors writer lays them out.
package dtype

// DType is a tensor element type that safetensors can represent. The zero value is Invalid.
type DType uint8

// The safetensors dtypes the converter writes.
const (
	Invalid DType = iota
	BOOL
	U8
	I8
	F8_E5M2
	F8_E4M3
	I16
	U16
	F16
	BF16
	I32
	U32
	F32
	C64
	F64
	I64
	U64
)

type info struct {
	name string // safetensors name
	size int    // bytes per element
	// rank is the declaration index in the reference implementation's Dtype enum; the writer
	// orders tensors by rank descending, so every tensor starts aligned to its element size.
	rank  int
	swap  int // byte-swap unit: size, or the component size for complex types
	torch string
}

var table = [...]info{
	Invalid: {},
	BOOL:    {"BOOL", 1, 0, 1, "bool"},
	U8:      {"U8", 1, 4, 1, "uint8"},
	I8:      {"I8", 1, 5, 1, "int8"},
	F8_E5M2: {"F8_E5M2", 1, 6, 1, "float8_e5m2"},
	F8_E4M3: {"F8_E4M3", 1, 7, 1, "float8_e4m3fn"},
	I16:     {"I16", 2, 11, 2, "int16"},
	U16:     {"U16", 2, 12, 2, "uint16"},
	F16:     {"F16", 2, 13, 2, "float16"},
	BF16:    {"BF16", 2, 14, 2, "bfloat16"},
	I32:     {"I32", 4, 15, 4, "int32"},
	U32:     {"U32", 4, 16, 4, "uint32"},
	F32:     {"F32", 4, 17, 4, "float32"},
	C64:     {"C64", 8, 18, 4, "complex64"},
	F64:     {"F64", 8, 19, 8, "float64"},
	I64:     {"I64", 8, 20, 8, "int64"},
	U64:     {"U64", 8, 21, 8, "uint64"},
}

// String returns the safetensors name ("F32"), or "INVALID".
func (d DType) String() string {
	if d == Invalid || int(d) >= len(table) {
		return "INVALID"
	}
	return table[d].name
}

// Size returns the number of bytes per element, or 0 for Invalid.
func (d DType) Size() int {
	if int(d) >= len(table) {
		return 0
	}
	return table[d].size
}

// SwapUnit returns the width in bytes of the units to reverse when converting big-endian data:
// the element size, or the component size for complex types; 1 means nothing to swap.
func (d DType) SwapUnit() int {
	if int(d) >= len(table) {
		return 0
	}
	return table[d].swap
}

// Rank returns the position of d in the reference writer's enum; higher ranks are written first.
func (d DType) Rank() int {
	if int(d) >= len(table) {
		return -1
	}
	return table[d].rank
}

// Torch returns the torch dtype name without the "torch." prefix ("float32").
func (d DType) Torch() string {
	if int(d) >= len(table) {
		return ""
	}
	return table[d].torch
}

// Parse returns the dtype with the given safetensors name.
func Parse(name string) (DType, bool) {
	return find(func(i info) bool { return i.name == name })
}

// find returns the first dtype whose table row matches.
func find(match func(info) bool) (DType, bool) {
	for d := BOOL; int(d) < len(table); d++ {
		if match(table[d]) {
			return d, true
		}
	}
	return Invalid, false
}

// Refused lists torch dtypes that exist but have no safetensors representation, with the reason
// the converter gives when it meets one.
var Refused = map[string]string{
	"complex128":       "complex128 has no safetensors dtype",
	"complex32":        "complex32 has no safetensors dtype",
	"float8_e5m2fnuz":  "float8_e5m2fnuz needs a safetensors reader newer than most consumers have",
	"float8_e4m3fnuz":  "float8_e4m3fnuz needs a safetensors reader newer than most consumers have",
	"float8_e8m0fnu":   "float8_e8m0fnu is not supported by the converter",
	"float4_e2m1fn_x2": "float4_e2m1fn_x2 is not supported by the converter",
	"qint8":            "quantized tensors have no safetensors dtype",
	"quint8":           "quantized tensors have no safetensors dtype",
	"qint32":           "quantized tensors have no safetensors dtype",
	"quint4x2":         "quantized tensors have no safetensors dtype",
	"quint2x4":         "quantized tensors have no safetensors dtype",
	"bits8":            "bits dtypes have no safetensors dtype",
	"bits16":           "bits dtypes have no safetensors dtype",
	"bits1x8":          "bits dtypes have no safetensors dtype",
	"bits2x4":          "bits dtypes have no safetensors dtype",
	"bits4x2":          "bits dtypes have no safetensors dtype",
}

// FromTorch returns the dtype for a torch dtype name such as "float32" (the name of the
// torch.<dtype> global). ok is false for names safetensors cannot represent or that torch does
// not have.
func FromTorch(name string) (DType, bool) {
	return find(func(i info) bool { return i.torch == name })
}

// storageTypes maps the legacy typed storage class names (torch.FloatStorage, ...) to dtypes.
// The quantized and complex128 classes are absent on purpose: they are refused by name.
var storageTypes = map[string]DType{
	"DoubleStorage":       F64,
	"FloatStorage":        F32,
	"HalfStorage":         F16,
	"LongStorage":         I64,
	"IntStorage":          I32,
	"ShortStorage":        I16,
	"CharStorage":         I8,
	"ByteStorage":         U8,
	"BoolStorage":         BOOL,
	"BFloat16Storage":     BF16,
	"ComplexFloatStorage": C64,
}

// FromStorageClass returns the dtype of a legacy typed storage class name such as
// "FloatStorage". ok is false for other names.
func FromStorageClass(name string) (DType, bool) {
	d, ok := storageTypes[name]
	return d, ok
}

// RefusedStorageClasses names the storage classes torch writes that the converter refuses, with
// the reason.
var RefusedStorageClasses = map[string]string{
	"ComplexDoubleStorage": "complex128 has no safetensors dtype",
	"QInt8Storage":         "quantized tensors have no safetensors dtype",
	"QUInt8Storage":        "quantized tensors have no safetensors dtype",
	"QInt32Storage":        "quantized tensors have no safetensors dtype",
	"QUInt4x2Storage":      "quantized tensors have no safetensors dtype",
	"QUInt2x4Storage":      "quantized tensors have no safetensors dtype",
}
