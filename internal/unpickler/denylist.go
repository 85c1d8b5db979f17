package unpickler

// dangerousModules are refused whole, with every submodule (placeholder: filled from
// ../shared/reference/pickle-scanners.md).
var dangerousModules = map[string]bool{
	"os": true, "posix": true, "nt": true, "subprocess": true,
}

// dangerousGlobals are refused by exact "module.name".
var dangerousGlobals = map[string]bool{
	"builtins.eval": true, "builtins.exec": true,
}
