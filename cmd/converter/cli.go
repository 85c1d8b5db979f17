package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ptsafe/converter/internal/atomicfile"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/envflag"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/sandbox"
	"github.com/ptsafe/converter/internal/unpickler"
)

// The help texts of the commands that read a checkpoint; `converter CMD -h` prints one, then
// the flags.
const (
	exitCodes = `Exit codes: 0 done; 1 any other failure (a file that cannot be read, an OUTPUT that
exists, I/O); 2 usage error; 3 refused as unsafe (a global or opcode outside the allowlist);
4 malformed, unsupported, or over a limit.`

	convertAbout = `Converts the PyTorch checkpoint INPUT into a verified safetensors file at OUTPUT.

OUTPUT defaults to the Hugging Face name, in INPUT's directory: pytorch_model.bin ->
model.safetensors, pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors,
NAME.{bin,pt,pth,ckpt} -> NAME.safetensors. An OUTPUT that is a directory gets that name
inside it. An OUTPUT or --manifest FILE that exists is refused unless --force is given; one that
is INPUT is always refused. On failure nothing is left at OUTPUT.

` + exitCodes

	scanAbout = `Reports what INPUT holds without converting it: the container, the pickle protocol,
every global (allowed, inert, dangerous or unknown, with its byte offset), the tensors and the
verdict (safe, unsafe, malformed or unsupported). --json prints the manifest schema.

` + exitCodes

	verifyAbout = `Validates FILE strictly (header rules, dtype sizes, offsets contiguous and covering
the data exactly, no duplicate keys); with --source INPUT, also rebuilds every tensor from the
checkpoint and compares the bytes.

` + exitCodes
)

// command is one verb's command line: its flags and the help text -h prints.
type command struct {
	fs       *flag.FlagSet
	synopsis string
	about    string
}

// newCommand returns a command whose flag set prints nothing itself: run reports parse errors
// in one line with the synopsis, and -h prints help to stdout.
func newCommand(name, args, about string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &command{fs: fs, synopsis: "converter " + name + " [flags] " + args, about: about}
}

// usageError is a command-line mistake (exit 2); run prints it with the command's synopsis.
type usageError struct {
	msg      string
	synopsis string
}

func (e *usageError) Error() string { return e.msg }

func (c *command) usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), synopsis: c.synopsis}
}

func (c *command) help(w io.Writer) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n\nFlags (before or after the arguments; -- ends them):\n", c.synopsis, c.about)
	c.fs.SetOutput(w)
	c.fs.PrintDefaults()
	c.fs.SetOutput(io.Discard)
}

// parse parses args, in which flags may come before, between or after the positional
// arguments, and returns the between least and most positional arguments. -h prints the help
// to stdout and returns flag.ErrHelp.
func (c *command) parse(args []string, least, most int, stdout io.Writer) ([]string, error) {
	flags, pos := splitFlags(c.fs, args)
	err := c.fs.Parse(flags)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.help(stdout)
		return nil, err
	case err != nil:
		return nil, c.usagef("%v", err)
	case len(pos) < least:
		return nil, c.usagef("missing arguments")
	case len(pos) > most:
		return nil, c.usagef("unexpected arguments: %s", strings.Join(pos[most:], " "))
	}
	return pos, nil
}

// splitFlags separates the flags in args from the positional arguments, so that flags typed
// after the arguments work (`convert in.pt out.safetensors --force`). A flag takes the next
// argument as its value unless it is boolean or written -name=value; "--" ends the flags, and
// a lone "-" is positional. Mistakes (unknown flags, a missing value) are left in the flags for
// fs.Parse to report.
func splitFlags(fs *flag.FlagSet, args []string) (flags, positional []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(positional, args[i+1:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimPrefix(a[1:], "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil && !isBoolFlag(f) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, positional
}

// isBoolFlag reports whether f takes no separate value, as the flag package decides it.
func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// inputs are the flags shared by the commands that read a checkpoint: --allow-global, --sandbox
// and the limits.
type inputs struct {
	allow     multiFlag
	sandboxed *bool
	limits    limits.Limits
}

func inputFlags(c *command, getenv func(string) string) (*inputs, error) {
	in := &inputs{limits: limits.Default()}
	c.fs.Var(&in.allow, "allow-global", "admit `MODULE.NAME` as an inert record (repeatable)")
	in.sandboxed = c.fs.Bool("sandbox", true, "parse and convert in a confined child process")
	if err := envflag.Bind(c.fs, getenv, "sandbox"); err != nil {
		return nil, c.usagef("%v", err)
	}
	if err := in.limits.RegisterFlags(c.fs, getenv); err != nil {
		return nil, c.usagef("%v", err)
	}
	return in, nil
}

// parse parses the command line (see command.parse) and returns the positional arguments and
// the conversion options the flags give.
func (in *inputs) parse(c *command, args []string, least, most int, stdout io.Writer) ([]string, convert.Options, error) {
	pos, err := c.parse(args, least, most, stdout)
	if err != nil {
		return nil, convert.Options{}, err
	}
	opts := convert.Options{AllowGlobals: in.allow, Limits: in.limits}
	if err := opts.Validate(); err != nil {
		return nil, opts, c.usagef("%v", err)
	}
	return pos, opts, nil
}

// engine returns the sandbox runner, whose degraded confinement is logged to stderr, or the
// in-process engine with --sandbox=false.
func (in *inputs) engine(stderr io.Writer) convert.Engine {
	if *in.sandboxed {
		return &sandbox.Runner{Config: sandbox.Config{Logger: slog.New(slog.NewTextHandler(stderr, nil))}}
	}
	return convert.InProcess{}
}

func runConvert(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c := newCommand("convert", "INPUT [OUTPUT]", convertAbout)
	sel := c.fs.String("select", "", "convert only the subtree at this dotted `PATH`")
	manifest := c.fs.String("manifest", "", "also write the manifest JSON to `FILE`")
	force := c.fs.Bool("force", false, "replace an existing OUTPUT and manifest FILE")
	in, err := inputFlags(c, getenv)
	if err != nil {
		return err
	}
	pos, opts, err := in.parse(c, args, 1, 2, stdout)
	if err != nil {
		return err
	}
	opts.Select, opts.Overwrite = *sel, *force
	src := pos[0]
	out := ""
	if len(pos) == 2 {
		out = pos[1]
	}
	out, err = checkTargets(src, out, *manifest, *force)
	if err != nil {
		return err
	}
	eng := in.engine(stderr)
	m, err := eng.Convert(ctx, src, out, opts)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("OUTPUT %s appeared during the conversion: --force replaces it", out)
	}
	if err != nil {
		return withAllowHint(m, err)
	}
	if *manifest != "" {
		if err := writeManifest(*manifest, m, *force); err != nil {
			os.Remove(out)
			return err
		}
	}
	fmt.Fprintf(stdout, "%s: %d tensors, %d bytes, sha256 %s\n", out, len(m.Tensors), m.Output.Size, m.Output.SHA256)
	return nil
}

// checkTargets refuses, before anything is read, a conversion that would destroy a file, and
// returns the output path. OUTPUT defaults to convert.OutputName of INPUT in INPUT's directory;
// an existing directory as OUTPUT gets that name inside it. OUTPUT and the manifest must not
// be INPUT (the same device and inode, whatever path, symlink or hard link leads to it) nor
// each other, and must not exist unless force.
func checkTargets(src, out, manifest string, force bool) (string, error) {
	in, err := readable("INPUT", src)
	if err != nil {
		return "", err
	}
	name := convert.OutputName(filepath.Base(src))
	if out == "" {
		out = filepath.Join(filepath.Dir(src), name)
	} else if st, err := os.Stat(out); err == nil && st.IsDir() {
		out = filepath.Join(out, name)
	}
	if err := checkTarget(in, "OUTPUT", out, force); err != nil {
		return "", err
	}
	if manifest == "" {
		return out, nil
	}
	if err := checkTarget(in, "--manifest", manifest, force); err != nil {
		return "", err
	}
	if sameFile(out, manifest) {
		return "", fmt.Errorf("--manifest %s is OUTPUT: give the manifest a file of its own", manifest)
	}
	return out, nil
}

// readable checks that the file a command reads can be opened, so that a missing or
// unreadable one is reported as such (exit 1) rather than as a failure of the converter.
func readable(what, path string) (fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s %s: %w", what, path, fault.PathFree(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot read %s %s: %w", what, path, fault.PathFree(err))
	}
	return st, nil
}

// checkTarget refuses a path the command would write (what names it in the message) when it is
// the input, a directory, or an existing file without force. A symlink counts as existing even
// when it dangles: replacing it needs --force too.
func checkTarget(in fs.FileInfo, what, path string, force bool) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("cannot use %s %s: %w", what, path, fault.PathFree(err))
	}
	st, err := os.Stat(path)
	switch {
	case err == nil && os.SameFile(in, st):
		return fmt.Errorf("%s %s is the INPUT file: refusing to overwrite the checkpoint", what, path)
	case err == nil && st.IsDir():
		return fmt.Errorf("%s %s is a directory", what, path)
	case !force:
		return fmt.Errorf("%s %s already exists: --force replaces it", what, path)
	}
	return nil
}

// sameFile reports whether a and b name one file: the same cleaned absolute path (neither
// need exist yet) or the same device and inode.
func sameFile(a, b string) bool {
	absA, errA := filepath.Abs(a)
	absB, errB := filepath.Abs(b)
	if errA == nil && errB == nil && absA == absB {
		return true
	}
	stA, errA := os.Stat(a)
	stB, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(stA, stB)
}

// writeManifest writes the manifest JSON atomically; without force it never replaces a file,
// not even one created while the conversion ran.
func writeManifest(path string, m *convert.Manifest, force bool) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	mode := atomicfile.NoReplace
	if force {
		mode = atomicfile.Replace
	}
	err = atomicfile.WriteFile(path, append(b, '\n'), 0o644, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("--manifest %s appeared during the conversion: --force replaces it", path)
	}
	if err != nil {
		return fmt.Errorf("write --manifest %s: %w", path, fault.PathFree(err))
	}
	return nil
}

// withAllowHint adds to an unsafe refusal the --allow-global flags that would admit its
// unknown globals, when those are all that is wrong with the file's globals. The globals come
// from the manifest the refused conversion returns.
func withAllowHint(m *convert.Manifest, err error) error {
	if fault.KindOf(err) != fault.Unsafe || m == nil || m.Verdict != "unsafe" {
		return err
	}
	if hint := allowHint(m.Globals); hint != "" {
		return fmt.Errorf("%w; %s", err, hint)
	}
	return err
}

// allowHint names the --allow-global flags (sorted, each once) that would admit the unknown
// globals as inert records, or "" when there are none or a known-dangerous global is present,
// which no flag admits.
func allowHint(globals []convert.GlobalRef) string {
	flags := map[string]bool{}
	for _, g := range globals {
		switch g.Class {
		case unpickler.Dangerous:
			return ""
		case unpickler.Unknown:
			// The policy matches normalized names (Python 2's __builtin__ is builtins).
			module, name := unpickler.Normalize(g.Module, g.Name)
			flags["--allow-global "+module+"."+name] = true
		}
	}
	if len(flags) == 0 {
		return ""
	}
	return "to admit the unknown globals as inert records: " + strings.Join(slices.Sorted(maps.Keys(flags)), " ")
}

func runScan(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c := newCommand("scan", "INPUT|DIR|s3://BUCKET/PREFIX", scanAbout+treeScanAbout)
	asJSON := c.fs.Bool("json", false, "print the report as JSON (the manifest schema; for a tree, the batch report)")
	tf, err := addTreeFlags(c, getenv)
	if err != nil {
		return err
	}
	in, err := inputFlags(c, getenv)
	if err != nil {
		return err
	}
	pos, opts, err := in.parse(c, args, 1, 1, stdout)
	if err != nil {
		return err
	}
	if isTree(pos[0]) {
		return runTreeScan(ctx, tf, in, opts, pos[0], *asJSON, stdout, stderr)
	}
	if _, err := readable("INPUT", pos[0]); err != nil {
		return err
	}
	m, err := in.engine(stderr).Scan(ctx, pos[0], opts)
	if m == nil {
		return err
	}
	if *asJSON {
		if err := printJSON(stdout, m); err != nil {
			return err
		}
	} else {
		printScan(stdout, m)
	}
	if hint := allowHint(m.Globals); fault.KindOf(err) == fault.Unsafe && hint != "" {
		return fmt.Errorf("%w; %s", err, hint)
	}
	return err
}

// printJSON prints v as indented JSON: a manifest, or a tree scan's report.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printScan(w io.Writer, m *convert.Manifest) {
	fmt.Fprintf(w, "file:      %s (%d bytes)\n", m.Source.Path, m.Source.Size)
	if m.Source.SHA256 != "" {
		fmt.Fprintf(w, "sha256:    %s\n", m.Source.SHA256)
	}
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
	c := newCommand("verify", "FILE.safetensors", verifyAbout)
	source := c.fs.String("source", "", "also compare every tensor with the checkpoint `INPUT`")
	in, err := inputFlags(c, getenv)
	if err != nil {
		return err
	}
	pos, opts, err := in.parse(c, args, 1, 1, stdout)
	if err != nil {
		return err
	}
	if _, err := readable("FILE", pos[0]); err != nil {
		return err
	}
	if *source != "" {
		if _, err := readable("--source", *source); err != nil {
			return err
		}
	}
	rep, err := in.engine(stderr).Verify(ctx, pos[0], *source, opts)
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
