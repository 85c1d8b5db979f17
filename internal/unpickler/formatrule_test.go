package unpickler

import (
	"encoding/json"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoGraphFormatting is a vet check of our own for the rule Describe exists for: in this
// package and in internal/convert, no value that may hold part of an unpickled object graph (an
// interface other than error, a gopickle type, or anything containing one) is passed to a
// variadic ...any parameter (fmt, fault, slog: every %v, %s, %q and Sprint), and no String or
// GoString method of a gopickle type is called. Such a value must go through Describe, whose
// output is bounded; fmt recurses into it without bound.
//
// Arguments forwarded with "args..." are not checked here: their own call sites are.
func TestNoGraphFormatting(t *testing.T) {
	if testing.Short() {
		t.Skip("type-checks two packages with export data from go list")
	}
	const module = "github.com/ptsafe/converter/internal/"
	targets := []string{module + "unpickler", module + "convert"}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to list export data with: %v", err)
	}
	out, err := exec.Command(goCmd, append([]string{"list", "-export", "-deps", "-json=ImportPath,Export,Dir,GoFiles"}, targets...)...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	type pkg struct{ ImportPath, Export, Dir string }
	pkgs := map[string]pkg{}
	files := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			pkg
			GoFiles []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p.pkg
		for _, f := range p.GoFiles {
			files[p.ImportPath] = append(files[p.ImportPath], filepath.Join(p.Dir, f))
		}
	}
	fset := token.NewFileSet()
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		return os.Open(pkgs[path].Export)
	})
	for _, target := range targets {
		var parsed []*ast.File
		for _, f := range files[target] {
			af, err := parser.ParseFile(fset, f, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			parsed = append(parsed, af)
		}
		info := &types.Info{Types: map[ast.Expr]types.TypeAndValue{}, Uses: map[*ast.Ident]types.Object{}}
		conf := types.Config{Importer: imp}
		if _, err := conf.Check(target, fset, parsed, info); err != nil {
			t.Fatalf("type-check %s: %v", target, err)
		}
		for _, f := range parsed {
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				if msg := formatViolation(call, info); msg != "" {
					t.Errorf("%s: %s", fset.Position(call.Pos()), msg)
				}
				return true
			})
		}
	}
}

// formatViolation returns why call breaks the rule, or "".
func formatViolation(call *ast.CallExpr, info *types.Info) string {
	if sel, ok := call.Fun.(*ast.SelectorExpr); ok && (sel.Sel.Name == "String" || sel.Sel.Name == "GoString") {
		if recv := info.TypeOf(sel.X); recv != nil && fromGopickle(recv) {
			return sel.Sel.Name + "() of a " + recv.String() + ": use Describe"
		}
	}
	if id, ok := call.Fun.(*ast.Ident); ok {
		if _, builtin := info.Uses[id].(*types.Builtin); builtin {
			return "" // append(trail, key) stores, it does not format
		}
	}
	sig, ok := info.TypeOf(call.Fun).(*types.Signature)
	if !ok || !sig.Variadic() || call.Ellipsis.IsValid() {
		return ""
	}
	last := sig.Params().At(sig.Params().Len() - 1).Type().(*types.Slice)
	if iface, ok := last.Elem().Underlying().(*types.Interface); !ok || !iface.Empty() {
		return ""
	}
	for _, arg := range call.Args[sig.Params().Len()-1:] {
		if tv := info.TypeOf(arg); tv != nil && mayHoldGraph(tv, map[types.Type]bool{}) {
			return "argument " + types.ExprString(arg) + " of type " + tv.String() + " is formatted: use Describe"
		}
	}
	return ""
}

// mayHoldGraph reports whether a value of type t may reach an unpickled object graph.
func mayHoldGraph(t types.Type, seen map[types.Type]bool) bool {
	if seen[t] {
		return false
	}
	seen[t] = true
	if fromGopickle(t) {
		return true
	}
	if types.Identical(t, types.Universe.Lookup("error").Type()) {
		return false
	}
	switch u := t.Underlying().(type) {
	case *types.Interface:
		return true
	case *types.Pointer:
		return mayHoldGraph(u.Elem(), seen)
	case *types.Slice:
		return mayHoldGraph(u.Elem(), seen)
	case *types.Array:
		return mayHoldGraph(u.Elem(), seen)
	case *types.Map:
		return mayHoldGraph(u.Key(), seen) || mayHoldGraph(u.Elem(), seen)
	case *types.Struct:
		for i := range u.NumFields() {
			if mayHoldGraph(u.Field(i).Type(), seen) {
				return true
			}
		}
	}
	return false
}

// fromGopickle reports whether t, or the type t points to, is declared by gopickle.
func fromGopickle(t types.Type) bool {
	if p, ok := t.(*types.Pointer); ok {
		t = p.Elem()
	}
	n, ok := t.(*types.Named)
	return ok && n.Obj().Pkg() != nil && strings.HasPrefix(n.Obj().Pkg().Path(), "github.com/nlpodyssey/gopickle/")
}
