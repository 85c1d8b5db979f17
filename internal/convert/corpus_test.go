package convert

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/safetensors"
	"github.com/ptsafe/converter/internal/testkit"
)

// TestCorpus checks every file of the shared corpus against the verdict SOURCES.md gives it:
// malicious files are refused as unsafe naming their first offending global, odd files are
// refused cleanly, and benign checkpoints convert with the expected tensor count. Malicious
// files are only ever parsed statically.
func TestCorpus(t *testing.T) {
	if _, err := os.Stat(testkit.CorpusDir()); err != nil {
		t.Skipf("corpus not present: %v", err)
	}
	type want struct {
		kind    string // "ok", "unsafe", or a refusal kind
		tensors int    // for ok
		global  string // for unsafe: the first offending global
	}
	unsafe := func(g string) want { return want{kind: "unsafe", global: g} }
	ok := func(n int) want { return want{kind: "ok", tensors: n} }
	cases := map[string]want{
		// A. Malicious and bypass samples.
		"picklescan__malicious0.pkl":                   unsafe("__builtin__.globals"),
		"picklescan__malicious1_v0.pkl":                unsafe("__builtin__.eval"),
		"picklescan__malicious2_v4.pkl":                unsafe("posix.system"),
		"picklescan__malicious10.pkl":                  unsafe("__builtin__.exec"),
		"picklescan__malicious11.pkl":                  unsafe("os.system"),
		"picklescan__malicious12.pkl":                  unsafe("operator.attrgetter"),
		"picklescan__malicious13b.pkl":                 unsafe("_pickle.loads"),
		"picklescan__malicious16.pkl":                  unsafe("pip.main"),
		"picklescan__malicious19.pkl":                  unsafe("functools.partial"),
		"picklescan__malicious23.pkl":                  unsafe("os.system"),
		"picklescan__broken_model.pkl":                 unsafe("builtins.exec"),
		"picklescan__malicious-invalid-bytes.pkl":      unsafe("os.system"),
		"picklescan__keyerror-exploit.pkl":             unsafe("os.system"),
		"picklescan__sys_module_override_sploit.pkl":   unsafe("torch._utils"),
		"picklescan__GHSA-vvpj-8cmc-gx39.pkl":          unsafe("pkgutil.resolve_name"),
		"picklescan__GHSA-84r2-jw7c-4r5q.pkl":          unsafe("operator.methodcaller"),
		"picklescan__GHSA-jgw4-cr84-mqxg.bin":          unsafe("asyncio.unix_events._UnixSubprocessTransport._start"),
		"picklescan__GHSA-g38g-8gr9-h9xp-uuid.pkl":     unsafe("uuid._get_command_stdout"),
		"picklescan__types_CodeType.pkl":               unsafe("types.CodeType"),
		"picklescan__pytorch_magic_bypass.pt":          unsafe("__builtin__.eval"),
		"picklescan__malicious1_central_directory.zip": unsafe("builtins.eval"),
		"picklescan__malicious1_0x1.zip":               unsafe("builtins.eval"),
		"picklescan__malicious1_crc.zip":               unsafe("builtins.eval"),
		"picklescan__malicious1_wrong_ext.zip":         unsafe("builtins.eval"),
		"picklescan__malicious1.7z":                    {kind: "unsupported"},
		"picklescan__dns_exfiltration.npy":             unsafe("ssl.get_server_certificate"),
		"modelscan__unsafe_zip_pytorch.pt":             unsafe("posix.system"),
		"modelaudit__multiple_stream_attack.pkl":       unsafe("builtins.eval"),
		"modelaudit__path_traversal.zip":               unsafe("posix.system"),
		"modelaudit__dill_func.pkl":                    unsafe("dill._dill._create_function"),
		// B. Odd files with benign content: a clean refusal.
		"picklescan__benign_password_protected.zip": {kind: "malformed"},
		"modelaudit__nested_pickle_raw.pkl":         {kind: "unsupported"},
		"silero-vad__silero_vad.jit":                {kind: "unsupported"},
		// C. Benign real checkpoints.
		"picklescan__pytorch_model.bin":          ok(38),
		"picklescan__new_pytorch_model.bin":      ok(1),
		"captum__titanic_model.pt":               ok(6),
		"captum__california_model.pt":            ok(8),
		"udacity-dl__checkpoint.pth":             ok(8),
		"udacity-dl__model_cifar.pt":             ok(10),
		"candle__test_with_key.pt":               ok(1),
		"candle__fortran_tensor_3d.pth":          ok(1),
		"gopickle__tensor_bfloat16_proto1.pt":    ok(1),
		"gopickle__tensor_float16_proto5_zip.pt": ok(1),
		// D. torch 2.x and format variants.
		"pytorch__lstm.LE.BOM.pt":                 ok(4),
		"pytorch__lstm.BE.BOM.pt":                 ok(4),
		"pytorch__tensor.double.BE.BOM.pt":        ok(1),
		"pytorch__tensor.half.BE.BOM.pt":          ok(1),
		"pytorch__tensor.double.BE.pt":            ok(1),
		"pytorch__serialized_py27_torch041.pt":    ok(1),
		"burn__parameter.pt":                      ok(1),
		"burn__mixed_types.pt":                    ok(4),
		"burn__bfloat16.pt":                       ok(1),
		"burn__checkpoint.pt":                     ok(5),
		"burn__complex_structure.pt":              ok(6),
		"burn__empty.pt":                          ok(1),
		"burn__scalar.pt":                         ok(1),
		"burn__special_values.pt":                 ok(1),
		"burn__batch_norm2d.pt":                   ok(5),
		"burn__legacy_uncloned_views.pt":          ok(2),
		"burn__tar_multi_dtype.tar":               {kind: "unsupported"},
		"picklejl__offset-strides.bin":            ok(2),
		"picklejl__strides.bin":                   ok(3),
		"picklejl__linear_state.bin":              ok(2),
		"tch-rs__foo.pt":                          {kind: "unsupported"},
		"torchsharp-pybridge__adam_load.pth":      ok(14),
		"ascend-pytorch__drop_path_base_data.pth": unsafe("numpy.core.multiarray._reconstruct"),
	}
	entries, err := os.ReadDir(testkit.CorpusDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "SOURCES.md" {
			continue
		}
		if _, listed := cases[e.Name()]; !listed {
			t.Errorf("corpus file %s has no expected verdict in this table", e.Name())
		}
	}
	for name, w := range cases {
		t.Run(name, func(t *testing.T) {
			src := filepath.Join(testkit.CorpusDir(), name)
			dst := filepath.Join(t.TempDir(), "out.safetensors")
			m, err := File(context.Background(), src, dst, Options{})
			if w.kind == "ok" {
				if err != nil {
					t.Fatalf("convert: %v", err)
				}
				if len(m.Tensors)+len(m.Aliases) != w.tensors {
					t.Errorf("%d tensors + %d aliases; want %d", len(m.Tensors), len(m.Aliases), w.tensors)
				}
				return
			}
			if err == nil {
				t.Fatalf("converted; want %s", w.kind)
			}
			if got := fault.KindOf(err).String(); got != w.kind {
				t.Fatalf("refused as %s (%v); want %s", got, err, w.kind)
			}
			if w.global != "" && !strings.Contains(err.Error(), "global "+w.global+" ") {
				t.Errorf("error %q does not name %s first", err, w.global)
			}
			if _, statErr := os.Stat(dst); !os.IsNotExist(statErr) {
				t.Errorf("output exists after a refusal")
			}
			// scan agrees with convert.
			sm, err := Scan(context.Background(), src, Options{})
			if sm == nil {
				t.Fatalf("scan: %v", err)
			}
			if sm.Error == nil || sm.Error.Type.String() != w.kind || fault.KindOf(err) != sm.Error.Type {
				t.Errorf("scan verdict %s %+v; want %s", sm.Verdict, sm.Error, w.kind)
			}
		})
	}
}

// TestCorpusValues checks values SOURCES.md gives for files where a plausible bug would keep
// names and shapes right but corrupt data: byte order, strides and offsets.
func TestCorpusValues(t *testing.T) {
	if _, err := os.Stat(testkit.CorpusDir()); err != nil {
		t.Skipf("corpus not present: %v", err)
	}
	f32 := func(b []byte) float64 { return float64(math.Float32frombits(binary.LittleEndian.Uint32(b))) }
	f64 := func(b []byte) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(b)) }
	cases := []struct {
		file, tensor string
		index        int // element index
		size         int
		decode       func([]byte) float64
		want         float64
	}{
		{"pytorch__tensor.double.BE.BOM.pt", "tensor", 0, 8, f64, 0.19819605333843945},
		{"pytorch__tensor.double.BE.BOM.pt", "tensor", 3, 8, f64, 0.46880944169494687},
		// No byteorder record: read as little-endian, as torch does; the converter never guesses.
		{"pytorch__tensor.double.BE.pt", "tensor", 0, 8, f64, -1.2117e-195},
		{"pytorch__lstm.BE.BOM.pt", "weight_ih_l0", 0, 4, f32, -0.19771},
		{"picklejl__offset-strides.bin", "weight1", 0, 4, f32, 0.53998},
		{"picklejl__offset-strides.bin", "weight1", 1, 4, f32, -0.61094},
		{"picklejl__offset-strides.bin", "weight1", 19, 4, f32, -0.70262},
		{"picklejl__strides.bin", "weight1", 0, 4, f32, -1.4984907},
		{"burn__legacy_uncloned_views.pt", "tensor2", 0, 4, f32, 50},
		{"burn__legacy_uncloned_views.pt", "tensor2", 9, 4, f32, 59},
		{"burn__scalar.pt", "tensor", 0, 4, f32, 42},
	}
	for _, c := range cases {
		dst := filepath.Join(t.TempDir(), "out.safetensors")
		if _, err := File(context.Background(), filepath.Join(testkit.CorpusDir(), c.file), dst, Options{}); err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		f, err := os.Open(dst)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		sf, err := safetensors.Read(f, st.Size(), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		tt, ok := sf.Lookup(c.tensor)
		if !ok {
			t.Fatalf("%s: no tensor %q", c.file, c.tensor)
		}
		b := make([]byte, c.size)
		if _, err := f.ReadAt(b, sf.DataStart+tt.Begin+int64(c.index*c.size)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		got := c.decode(b)
		if math.Abs(got-c.want) > 1e-5*math.Max(1, math.Abs(c.want)) {
			t.Errorf("%s %s[%d] = %v; want %v", c.file, c.tensor, c.index, got, c.want)
		}
	}
}
