package unpickler

// The denylist only labels globals for reports: the converter refuses every global that is not
// on the exact allowlist anyway, so a gap here changes a report from "dangerous" to "unknown",
// never a verdict. It is kept as complete as the public scanners' lists so that reports name
// known payloads as such.
//
// Sources (read 2025-2026, see shared/reference/pickle-scanners.md):
//   - picklescan src/picklescan/scanner.py _unsafe_globals (mmaitre314/picklescan, MIT) and its
//     advisories: CVE-2025-1716 (pip), -10157 (asyncio submodules), -71320 (pydoc.locate +
//     operator.methodcaller), -71322 (pty), -71351 (timeit), -71355 (numpy.testing runstring),
//     -71365 (numpy.f2py), CVE-2026-56315 (uuid/imaplib/_osx_support/_aix_support/_pyrepl/test),
//     GHSA-655q-fx9r-782v (functools.partial(torch.load), venv, pydoc.pipepager,
//     torch._inductor.codecache.compile_file), GHSA-46h3-79wf-xr6c and GHSA-955r-x9j8-7rhh
//     (_operator), GHSA-9726-w42j-3qjr (io.FileIO, urllib.request), GHSA-m7j5-r2p5-c39r
//     (logging.FileHandler), GHSA-9m3x-qqw2-h32h (types.CodeType, cloudpickle),
//     GHSA-vvpj-8cmc-gx39 (pkgutil.resolve_name), the torch-internal batch GHSA-4r9r-ch6f-vxmx,
//     -86cj-95qr-2p4f, -f4x7-rfwp-v3xw, -f745-w6jp-hpxx, -jhph-76pp-mggw, -h3qp-7fh3-f8h4,
//     -vr7h-p6mm-wpmh, -vv6j-3g6g-2pvj, -4whj-rm5r-c2v8.
//   - modelscan modelscan/settings.py unsafe_globals (protectai/modelscan, Apache-2.0), issues
//     #85 #89 #331 and PR #346 (mailcap.findmatch).
//   - fickling analysis UnsafeImports / UnsafeImportsML (trailofbits/fickling) module list.
//   - modelaudit ALWAYS_DANGEROUS_{MODULES,FUNCTIONS} (promptfoo/modelaudit, MIT).
//   - torch/_weights_only_unpickler.py: sys, os, posix, nt can never be allowlisted.
//
// Modules are listed whole only when nothing in them is plain data; for modules that also hold
// harmless data types (uuid.UUID, io.BytesIO, logging levels, operator.add, ...) only the
// dangerous callables are listed by exact name.

// dangerousModules are refused whole, with every submodule.
var dangerousModules = map[string]bool{
	// Process execution and the OS interface (os.system pickles as posix/nt.system).
	"os": true, "posix": true, "nt": true, "subprocess": true, "commands": true, "popen2": true,
	"pty": true, "pexpect": true, "_posixsubprocess": true, "multiprocessing": true,
	"_winapi": true, "msvcrt": true, "winreg": true, "_winreg": true,
	// Interpreter internals, code loading and execution.
	"sys": true, "runpy": true, "importlib": true, "imp": true, "pkgutil": true, "zipimport": true,
	"code": true, "codeop": true, "marshal": true, "ctypes": true, "_ctypes": true, "cffi": true,
	"site": true, "sitecustomize": true, "usercustomize": true, "gc": true, "inspect": true,
	"atexit": true, "signal": true, "_signal": true, "threading": true, "_thread": true,
	"thread": true, "asyncio": true, "concurrent": true, "sched": true,
	// Nested (de)serializers: unpickling bytes inside a pickle runs their payload unscanned.
	"pickle": true, "_pickle": true, "cPickle": true, "pickletools": true,
	"dill": true, "cloudpickle": true, "joblib": true, "shelve": true, "jsonpickle": true,
	"yaml": true, "_yaml": true,
	// Debuggers, profilers, REPLs and tools that run code strings.
	"pdb": true, "bdb": true, "timeit": true, "trace": true, "profile": true, "cProfile": true,
	"pydoc": true, "doctest": true, "idlelib": true, "lib2to3": true, "_pyrepl": true,
	"rlcompleter": true, "tkinter": true, "turtle": true, "IPython": true,
	// Package installers and environments.
	"pip": true, "ensurepip": true, "venv": true, "distutils": true, "setuptools": true,
	"_distutils_hack": true,
	// Files, archives and directories (read, write, delete, extract).
	"shutil": true, "tempfile": true, "glob": true, "fileinput": true, "filecmp": true,
	"zipfile": true, "tarfile": true, "dbm": true, "mailbox": true,
	"mailcap": true, "linecache": true, "fcntl": true, "mmap": true, "resource": true,
	// Network clients and servers (exfiltration, download, SSRF).
	"socket": true, "_socket": true, "ssl": true, "_ssl": true, "http": true, "httplib": true,
	"urllib": true, "urllib2": true, "urllib3": true, "requests": true, "aiohttp": true,
	"httpx": true, "ftplib": true, "smtplib": true, "smtpd": true, "telnetlib": true,
	"poplib": true, "imaplib": true, "nntplib": true, "xmlrpc": true, "socketserver": true,
	"SocketServer": true, "webbrowser": true, "asyncore": true, "asynchat": true,
	// Platform probes that shell out, and private helpers found to run commands.
	"platform": true, "_osx_support": true, "_aix_support": true, "test": true,
	// numpy helpers that eval or exec strings.
	"numpy.f2py": true, "numpy.testing": true, "numpy.distutils": true,
	// torch internals that compile, run code, load other files or fetch from the network.
	// (torch.jit and torch.distributed are not listed whole: TorchScript and distributed
	// checkpoints reference harmless data helpers there, such as torch.jit._pickle.build_intlist.)
	"torch.hub": true, "torch._dynamo": true, "torch._inductor": true,
	"torch.jit.unsupported_tensor_ops": true, "torch.utils.bottleneck": true,
	"torch.utils.collect_env": true, "torch.utils.cpp_extension": true,
	"torch.utils._config_module": true, "torch.utils.data.datapipes": true,
	"torch.distributed.rpc": true, "torch.package": true, "torch.testing": true,
}

// dangerousGlobals are refused by exact "module.name" (after Normalize: Python 2 names such as
// __builtin__ are matched through their Python 3 spelling).
var dangerousGlobals = func() map[string]bool {
	m := map[string]bool{
		// operator: callables that reach attributes or methods of anything.
		"operator.attrgetter": true, "operator.itemgetter": true, "operator.methodcaller": true,
		"_operator.attrgetter": true, "_operator.itemgetter": true, "_operator.methodcaller": true,
		// functools: wrap a dangerous callable so the call happens later.
		"functools.partial": true, "functools.reduce": true, "_functools.partial": true,
		"_functools.reduce": true,
		// Loaders of other (unscanned) files or pickles.
		"torch.load": true, "torch.serialization.load": true, "torch.serialization._load": true,
		"torch.storage._load_from_bytes": true, "torch.utils.model_zoo.load_url": true,
		"torch.jit.load": true, "torch.jit._load_for_lite_interpreter": true,
		"torch.export.load": true, "torch._C.import_ir_module": true,
		"numpy.load": true, "numpy.loadtxt": true, "numpy.fromfile": true, "numpy.save": true,
		"numpy.savez": true, "numpy.ctypeslib.load_library": true, "numpy.lib.npyio.load": true,
		"numpy.core.multiarray.fromfile": true, "numpy._core.multiarray.fromfile": true,
		"pandas.read_pickle": true, "pandas.io.pickle.read_pickle": true,
		// Code objects and functions built from raw bytecode.
		"types.CodeType": true, "types.FunctionType": true, "types.LambdaType": true,
		"types.MethodType": true, "types.ModuleType": true,
		// File and logging handlers that open files.
		"io.open": true, "io.FileIO": true, "io.open_code": true, "_io.open": true,
		"_io.FileIO": true, "_io.open_code": true, "codecs.open": true, "logging.FileHandler": true,
		"logging.handlers.RotatingFileHandler": true, "logging.handlers.TimedRotatingFileHandler": true,
		"logging.handlers.WatchedFileHandler": true, "logging.handlers.SocketHandler": true,
		"logging.handlers.DatagramHandler": true, "logging.handlers.SysLogHandler": true,
		"logging.handlers.SMTPHandler": true, "logging.handlers.HTTPHandler": true,
		"logging.config.fileConfig": true, "logging.config.dictConfig": true,
		"logging.config.listen": true, "gzip.open": true, "bz2.open": true, "lzma.open": true,
		"gzip.GzipFile": true, "bz2.BZ2File": true, "lzma.LZMAFile": true,
		// uuid: only the helpers that run ifconfig/ip/arp/netstat; uuid.UUID is data.
		"uuid._get_command_stdout": true, "uuid._popen": true, "uuid._find_mac": true,
		"uuid._find_mac_near_keyword": true, "uuid._find_mac_under_heading": true,
		"uuid._ifconfig_getnode": true, "uuid._ip_getnode": true, "uuid._arp_getnode": true,
		"uuid._lanscan_getnode": true, "uuid._netstat_getnode": true, "uuid._netbios_getnode": true,
		"uuid._unix_getnode": true, "uuid._windll_getnode": true, "uuid.getnode": true,
		// Other stdlib callables reported in bypasses.
		"weakref.finalize": true, "xml.dom.minidom.parse": true,
		"xml.etree.ElementTree.parse": true, "xml.sax.parse": true,
		// Torch internals that evaluate strings or run commands (picklescan advisories).
		"torch.fx.experimental.symbolic_shapes.ShapeEnv.evaluate_guards_expression": true,
	}
	// pathlib paths are plain data in many training checkpoints; only their file methods,
	// reachable through dotted names, are dangerous.
	for _, c := range []string{"Path", "PosixPath", "WindowsPath"} {
		for _, f := range []string{"open", "read_text", "read_bytes", "write_text",
			"write_bytes", "unlink", "rmdir", "rename", "replace", "touch", "mkdir",
			"symlink_to", "hardlink_to", "chmod", "iterdir", "glob", "rglob"} {
			m["pathlib."+c+"."+f] = true
		}
	}
	// builtins: everything that runs code, reaches attributes or globals, or touches files.
	// Data constructors (set, frozenset, bytearray, complex, slice, ...) stay inert.
	for _, n := range []string{"eval", "exec", "compile", "open", "getattr", "setattr",
		"delattr", "hasattr", "__import__", "globals", "locals", "vars", "input",
		"breakpoint", "apply", "execfile", "file", "reload", "help", "exit", "quit", "type",
		"__build_class__", "__loader__"} {
		m["builtins."+n] = true
	}
	return m
}()
