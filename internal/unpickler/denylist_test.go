package unpickler

import "testing"

func TestDenylistClassify(t *testing.T) {
	for _, tc := range []struct {
		module, name string
		want         Class
		why          string
	}{
		{"torch.serialization", "load", Dangerous, "loads another file with weights_only=False (malicious19)"},
		{"torch", "load", Dangerous, "same loader, top-level name"},
		{"torch.storage", "_load_from_bytes", Dangerous, "unpickles nested bytes"},
		{"torch._utils", "_rebuild_tensor_v2", Allowed, "the tensor rebuild the VM implements"},
		{"torch.nn.modules.linear", "Linear", Unknown, "a module class: refused, but not a known payload"},
		{"torch", "FloatStorage", Allowed, "storage type"},
		{"collections", "OrderedDict", Allowed, "state dict container"},
		{"builtins", "set", Inert, "data constructor"},
		{"__builtin__", "eval", Dangerous, "Python 2 spelling, normalized"},
		{"builtins", "exec", Dangerous, ""},
		{"builtins", "getattr", Dangerous, ""},
		{"builtins", "__import__", Dangerous, "malicious12"},
		{"__builtin__", "globals", Dangerous, "malicious0"},
		{"builtins", "breakpoint", Dangerous, ""},
		{"__builtin__", "execfile", Dangerous, ""},
		{"os", "system", Dangerous, "module refused whole"},
		{"posix", "system", Dangerous, "os.system pickles as posix.system"},
		{"nt", "system", Dangerous, ""},
		{"subprocess", "Popen", Dangerous, ""},
		{"os.path", "join", Dangerous, "submodule of a refused module"},
		{"asyncio.unix_events", "_UnixSubprocessTransport._start", Dangerous, "CVE-2025-10157"},
		{"pip", "main", Dangerous, "CVE-2025-1716"},
		{"_pickle", "loads", Dangerous, "malicious13b"},
		{"dill._dill", "_create_function", Dangerous, ""},
		{"pkgutil", "resolve_name", Dangerous, "GHSA-vvpj-8cmc-gx39"},
		{"pydoc", "locate", Dangerous, ""},
		{"runpy", "_run_code", Dangerous, ""},
		{"timeit", "timeit", Dangerous, "CVE-2025-71351"},
		{"ssl", "get_server_certificate", Dangerous, "DNS exfiltration"},
		{"webbrowser", "open", Dangerous, ""},
		{"importlib", "import_module", Dangerous, "modelscan #331"},
		{"operator", "attrgetter", Dangerous, ""},
		{"_operator", "methodcaller", Dangerous, ""},
		{"operator", "add", Unknown, "harmless operator functions are not listed"},
		{"functools", "partial", Dangerous, ""},
		{"functools", "reduce", Dangerous, ""},
		{"types", "CodeType", Dangerous, ""},
		{"types", "FunctionType", Dangerous, ""},
		{"uuid", "_get_command_stdout", Dangerous, "CVE-2026-56315"},
		{"uuid", "UUID", Unknown, "uuid.UUID is data: only the command helpers are listed"},
		{"numpy", "load", Dangerous, ""},
		{"numpy.f2py", "crackfortran", Dangerous, "CVE-2025-71365"},
		{"numpy.testing._private.utils", "runstring", Dangerous, "CVE-2025-71355"},
		{"numpy.core.multiarray", "_reconstruct", Unknown, "numpy arrays: refused, not a payload"},
		{"io", "FileIO", Dangerous, ""},
		{"logging", "FileHandler", Dangerous, ""},
		{"pathlib", "PosixPath", Unknown, "paths are data in training checkpoints"},
		{"pathlib", "Path.write_text", Dangerous, "file write through a dotted name"},
		{"torch._inductor.codecache", "compile_file", Dangerous, ""},
		{"torch.jit._pickle", "build_intlist", Unknown, "TorchScript data helper, not a payload"},
		{"torch.utils.collect_env", "run", Dangerous, ""},
		{"shutil", "rmtree", Dangerous, ""},
		{"ctypes", "CDLL", Dangerous, ""},
		{"marshal", "loads", Dangerous, ""},
		{"tempfile", "mkstemp", Dangerous, "creates files"},
		{"urllib.request", "urlopen", Dangerous, ""},
		{"requests.api", "get", Dangerous, ""},
	} {
		var p *Policy
		if got := p.Classify(tc.module, tc.name); got != tc.want {
			t.Errorf("Classify(%s, %s) = %v, want %v (%s)", tc.module, tc.name, got, tc.want, tc.why)
		}
	}
}

// TestDenylistNeverShadowsAllowlist checks that no allowlisted or inert global is also on the
// denylist, which would make the tables contradict each other.
func TestDenylistNeverShadowsAllowlist(t *testing.T) {
	for q := range allowed {
		if dangerousGlobals[q] {
			t.Errorf("%s is both allowed and dangerous", q)
		}
	}
	for q := range inert {
		if dangerousGlobals[q] {
			t.Errorf("%s is both inert and dangerous", q)
		}
	}
	var p *Policy
	for _, q := range []string{"builtins.set", "builtins.bytearray", "_codecs.encode", "torch.device",
		"collections.OrderedDict", "copyreg._reconstructor"} {
		i := len(q) - 1
		for q[i] != '.' {
			i--
		}
		if c := p.Classify(q[:i], q[i+1:]); c == Dangerous {
			t.Errorf("%s classified dangerous", q)
		}
	}
}
