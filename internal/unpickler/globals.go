package unpickler

import (
	"fmt"
	"strings"
)

// Class is the converter's judgement of one pickle global.
type Class int

const (
	// Unknown globals are neither allowlisted nor known to be dangerous; they are refused.
	Unknown Class = iota
	// Allowed globals are the tensor machinery the restricted VM implements itself.
	Allowed
	// Inert globals are data types kept as opaque records and never interpreted.
	Inert
	// Dangerous globals are known to execute code, touch files or the network, or reach other
	// callables; they are refused and reported.
	Dangerous
)

// String returns the stable name used in reports: "allowed", "inert", "dangerous", "unknown".
func (c Class) String() string {
	switch c {
	case Allowed:
		return "allowed"
	case Inert:
		return "inert"
	case Dangerous:
		return "dangerous"
	default:
		return "unknown"
	}
}

// MarshalText makes Class print by name in JSON.
func (c Class) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText decodes a class from its String; an unknown name is an error.
func (c *Class) UnmarshalText(b []byte) error {
	for k := Unknown; k <= Dangerous; k++ {
		if k.String() == string(b) {
			*c = k
			return nil
		}
	}
	return fmt.Errorf("unknown global class %q", b)
}

// Global is one GLOBAL, STACK_GLOBAL or INST reference found in a pickle stream.
type Global struct {
	Module string `json:"module"`
	Name   string `json:"name"`
	// Offset is the byte offset of the opcode inside its pickle stream.
	Offset int64 `json:"offset"`
	Class  Class `json:"class"`
}

// Qualified returns "module.name".
func (g Global) Qualified() string { return g.Module + "." + g.Name }

// Policy decides which globals a pickle may reference. The zero value applies the built-in
// tables only.
type Policy struct {
	// Extra holds "module.name" entries admitted as inert records (--allow-global). A global on
	// the dangerous list or in a blocklisted module is never admitted.
	Extra map[string]bool
}

// Classify judges module.name after mapping Python 2 names to Python 3 ones, matching exact
// (module, name) pairs only: a prefix such as "torch." is never trusted.
func (p *Policy) Classify(module, name string) Class {
	module, name = Normalize(module, name)
	q := module + "." + name
	if allowed[q] {
		return Allowed
	}
	if isDangerous(module, name) {
		return Dangerous
	}
	if inert[q] || (p != nil && p.Extra[q]) {
		return Inert
	}
	return Unknown
}

// Normalize applies the Python 2 to 3 renames pickle protocol 2 writes (__builtin__ ->
// builtins, copy_reg -> copyreg) and torch's storage aliases.
func Normalize(module, name string) (string, string) {
	switch module {
	case "__builtin__":
		module = "builtins"
	case "copy_reg":
		module = "copyreg"
	}
	return module, name
}

// allowed is the tensor machinery the VM implements as sentinels.
var allowed = func() map[string]bool {
	m := map[string]bool{
		"torch._utils._rebuild_tensor_v2":            true,
		"torch._utils._rebuild_tensor_v3":            true,
		"torch._utils._rebuild_parameter":            true,
		"torch._utils._rebuild_parameter_with_state": true,
		"torch._tensor._rebuild_from_type_v2":        true,
		"torch.storage.UntypedStorage":               true,
		"torch.UntypedStorage":                       true,
		"collections.OrderedDict":                    true,
		"torch.Size":                                 true,
		"torch.nn.parameter.Parameter":               true,
		"torch.Tensor":                               true,
		// Recognised so that the tensor they rebuild can be refused by name (exit 4), not
		// mistaken for an attack (exit 3): torch's own weights_only allowlist admits them.
		"torch._utils._rebuild_qtensor":                       true,
		"torch._utils._rebuild_sparse_tensor":                 true,
		"torch._utils._rebuild_meta_tensor_no_storage":        true,
		"torch._utils._rebuild_wrapper_subclass":              true,
		"torch._utils._rebuild_device_tensor_from_numpy":      true,
		"torch._utils._rebuild_device_tensor_from_cpu_tensor": true,
		"torch._utils._rebuild_tensor":                        true,
		"torch.serialization._get_layout":                     true,
		"torch.per_tensor_affine":                             true,
		"torch.per_tensor_symmetric":                          true,
		"torch.per_channel_affine":                            true,
		"torch.per_channel_symmetric":                         true,
		"torch.per_channel_affine_float_qparams":              true,
	}
	for _, s := range []string{"Double", "Float", "Half", "Long", "Int", "Short", "Char", "Byte",
		"Bool", "BFloat16", "ComplexFloat", "ComplexDouble", "QInt8", "QUInt8", "QInt32",
		"QUInt4x2", "QUInt2x4"} {
		m["torch."+s+"Storage"] = true
		m["torch.cuda."+s+"Storage"] = true
	}
	for _, d := range []string{"float64", "float32", "float16", "bfloat16", "int64", "int32",
		"int16", "int8", "uint8", "bool", "uint16", "uint32", "uint64", "float8_e5m2",
		"float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu", "complex64",
		"complex128", "complex32", "float4_e2m1fn_x2", "qint8", "quint8", "qint32", "quint4x2",
		"quint2x4", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2"} {
		m["torch."+d] = true
	}
	return m
}()

// inert are data types kept as opaque records: they carry training metadata, never behaviour.
var inert = map[string]bool{
	"argparse.Namespace":      true,
	"builtins.set":            true,
	"builtins.frozenset":      true,
	"builtins.complex":        true,
	"builtins.slice":          true,
	"builtins.bytearray":      true,
	"builtins.bytes":          true,
	"builtins.object":         true,
	"_codecs.encode":          true,
	"torch.device":            true,
	"collections.defaultdict": true,
	"collections.Counter":     true,
	"copyreg._reconstructor":  true,
	"builtins.list":           true,
	"builtins.dict":           true,
	"builtins.tuple":          true,
	"builtins.int":            true,
	"builtins.float":          true,
	"builtins.str":            true,
	"builtins.bool":           true,
}

// isDangerous reports whether module.name is on the maintained denylist, either by exact name or
// because its module (or a parent package) is blocklisted as a whole.
func isDangerous(module, name string) bool {
	if dangerousGlobals[module+"."+name] {
		return true
	}
	for m := module; m != ""; {
		if dangerousModules[m] {
			return true
		}
		i := strings.LastIndexByte(m, '.')
		if i < 0 {
			break
		}
		m = m[:i]
	}
	return false
}
