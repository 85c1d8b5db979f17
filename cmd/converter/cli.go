package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/sandbox"
)

// errUsage marks a command-line mistake (exit 2).
var errUsage = errors.New("usage")

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// commonFlags registers the limits on fs and returns the options they fill.
func commonFlags(fs *flag.FlagSet, getenv func(string) string) (*convert.Options, error) {
	opts := &convert.Options{Limits: limits.Default()}
	if err := opts.Limits.RegisterFlags(fs, getenv); err != nil {
		return nil, err
	}
	return opts, nil
}

// sandboxFlag registers --sandbox (default true, or CONVERTER_SANDBOX when set): whether the
// input is parsed and converted in a confined child process or in this one.
func sandboxFlag(fs *flag.FlagSet, getenv func(string) string) (*bool, error) {
	def := true
	if v := getenv("CONVERTER_SANDBOX"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("CONVERTER_SANDBOX=%q: want true or false", v)
		}
		def = b
	}
	return fs.Bool("sandbox", def, "parse and convert in a confined child process (env CONVERTER_SANDBOX)"), nil
}

// newRunner returns the sandbox runner for one command; degraded confinement is logged to
// stderr.
func newRunner(stderr io.Writer) *sandbox.Runner {
	return &sandbox.Runner{Config: sandbox.Config{Logger: slog.New(slog.NewTextHandler(stderr, nil))}}
}

// inputs are the flags shared by the commands that read a checkpoint: --allow-global, --sandbox
// and the limits.
type inputs struct {
	allow     multiFlag
	sandboxed *bool
	opts      *convert.Options
}

func inputFlags(fs *flag.FlagSet, getenv func(string) string) (*inputs, error) {
	in := &inputs{}
	fs.Var(&in.allow, "allow-global", "admit `MODULE.NAME` as an inert record (repeatable)")
	var err error
	if in.sandboxed, err = sandboxFlag(fs, getenv); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if in.opts, err = commonFlags(fs, getenv); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	return in, nil
}

// parseArgs parses the command line, requires between least and most positional arguments
// (usage says which), and returns the conversion options the flags give, or a usage error.
func (in *inputs) parseArgs(fs *flag.FlagSet, args []string, least, most int, usage string) (convert.Options, error) {
	if err := parse(fs, args); err != nil {
		return convert.Options{}, err
	}
	if fs.NArg() < least || fs.NArg() > most {
		return convert.Options{}, fmt.Errorf("%w: %s", errUsage, usage)
	}
	opts := *in.opts
	opts.AllowGlobals = in.allow
	if err := opts.Validate(); err != nil {
		return opts, fmt.Errorf("%w: %v", errUsage, err)
	}
	return opts, nil
}

// engine runs the operations that read a checkpoint: *sandbox.Runner in a confined child,
// inProcess here.
type engine interface {
	Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error)
	Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error)
	Verify(ctx context.Context, path, source string, opts convert.Options) (*convert.Report, error)
}

// engine returns the sandbox runner, or the in-process engine with --sandbox=false.
func (in *inputs) engine(stderr io.Writer) engine {
	if *in.sandboxed {
		return newRunner(stderr)
	}
	return inProcess{}
}

type inProcess struct{}

func (inProcess) Convert(ctx context.Context, src, dst string, opts convert.Options) (*convert.Manifest, error) {
	return convert.File(ctx, src, dst, opts)
}

func (inProcess) Scan(ctx context.Context, src string, opts convert.Options) (*convert.Manifest, error) {
	return convert.Scan(ctx, src, opts)
}

func (inProcess) Verify(ctx context.Context, path, source string, opts convert.Options) (*convert.Report, error) {
	return convert.Verify(ctx, path, source, opts)
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func runConvert(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("convert", stderr)
	sel := fs.String("select", "", "convert only the subtree at this dotted `PATH`")
	manifest := fs.String("manifest", "", "write the manifest JSON to `FILE`")
	in, err := inputFlags(fs, getenv)
	if err != nil {
		return err
	}
	opts, err := in.parseArgs(fs, args, 1, 2, "convert needs INPUT [OUTPUT]")
	if err != nil {
		return err
	}
	src, out := fs.Arg(0), fs.Arg(1)
	if out == "" {
		out = filepath.Join(filepath.Dir(src), convert.OutputName(filepath.Base(src)))
	}
	opts.Select = *sel
	m, err := in.engine(stderr).Convert(ctx, src, out, opts)
	if err != nil {
		return err
	}
	if *manifest != "" {
		if err := writeJSONFile(*manifest, m); err != nil {
			os.Remove(out)
			return err
		}
	}
	fmt.Fprintf(stdout, "%s: %d tensors, %d bytes, sha256 %s\n", out, len(m.Tensors), m.Output.Size, m.Output.SHA256)
	return nil
}

func runScan(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("scan", stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	in, err := inputFlags(fs, getenv)
	if err != nil {
		return err
	}
	opts, err := in.parseArgs(fs, args, 1, 1, "scan needs INPUT")
	if err != nil {
		return err
	}
	m, err := in.engine(stderr).Scan(ctx, fs.Arg(0), opts)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(m); err != nil {
			return err
		}
	} else {
		printScan(stdout, m)
	}
	if m.Error != nil {
		return reported{kind: m.Error.Type, detail: m.Error.Detail}
	}
	return nil
}

// reported is a scan verdict already printed in full: the exit code follows its kind.
type reported struct{ kind, detail string }

func (r reported) Error() string { return r.detail }

func printScan(w io.Writer, m *convert.Manifest) {
	fmt.Fprintf(w, "file:      %s (%d bytes)\n", m.Source.Path, m.Source.Size)
	fmt.Fprintf(w, "container: %s", m.Source.Container)
	if m.Source.Prefix != "" {
		fmt.Fprintf(w, " (folder %q)", m.Source.Prefix)
	}
	fmt.Fprintf(w, ", pickle protocol %d\n", m.Source.Protocol)
	fmt.Fprintf(w, "globals:\n")
	for _, g := range m.Globals {
		fmt.Fprintf(w, "  %-9s %s.%s (%s@%d)\n", g.Class, g.Module, g.Name, g.Entry, g.Offset)
	}
	fmt.Fprintf(w, "tensors:   %d\n", len(m.Tensors))
	for _, t := range m.Tensors {
		fmt.Fprintf(w, "  %s %s %v %d bytes\n", t.Name, t.DType, t.Shape, t.Bytes)
	}
	fmt.Fprintf(w, "verdict:   %s\n", m.Verdict)
}

func runVerify(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", stderr)
	source := fs.String("source", "", "also compare every tensor with the checkpoint `INPUT`")
	in, err := inputFlags(fs, getenv)
	if err != nil {
		return err
	}
	opts, err := in.parseArgs(fs, args, 1, 1, "verify needs FILE.safetensors")
	if err != nil {
		return err
	}
	rep, err := in.engine(stderr).Verify(ctx, fs.Arg(0), *source, opts)
	if err != nil {
		return err
	}
	what := "valid"
	if rep.Source != nil {
		what = "valid, every tensor equals the source"
	}
	fmt.Fprintf(stdout, "%s: %s (%d tensors, sha256 %s)\n", rep.Path, what, len(rep.Tensors), rep.SHA256)
	return nil
}

// writeJSONFile writes v as indented JSON, atomically.
func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fault.Wrap(fault.Internal, "", err, "write manifest")
	}
	if err := os.Rename(tmp, path); err != nil {
		return fault.Wrap(fault.Internal, "", err, "write manifest")
	}
	return nil
}

// exitCode maps a command's error to the exit code contract.
func exitCode(err error) int {
	var r reported
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.As(err, &r):
		switch r.kind {
		case "unsafe":
			return 3
		case "malformed", "unsupported", "limit":
			return 4
		}
		return 1
	}
	return fault.KindOf(err).ExitCode()
}

// parse parses flags; -h is not an error, anything else is a usage error.
func parse(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return errUsage
}
