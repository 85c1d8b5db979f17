// Command converter turns PyTorch pickle checkpoints into verified safetensors files without
// executing anything the pickle names. See README.md for the command-line contract.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/sandbox"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	if args[0] == sandbox.ChildCommand {
		// This process is a sandbox child: it serves one request and nothing else.
		return sandbox.RunChild(stdin, stdout, stderr)
	}
	cmds := map[string]func(context.Context, []string, func(string) string, io.Writer, io.Writer) error{
		"convert":     runConvert,
		"batch":       runBatch,
		"scan":        runScan,
		"verify":      runVerify,
		"serve":       runServe,
		"healthcheck": runHealthcheck,
		"worker":      runWorker,
		"migrate":     runMigrate,
	}
	name := args[0]
	switch name {
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "converter %s\n", convert.Version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return 0
	}
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "converter: unknown command %q\n%s\n", name, usage)
		return 2
	}
	err := guard(func() error { return cmd(ctx, args[1:], getenv, stdout, stderr) })
	var ue *usageError
	var st *exitStatus
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &st):
		fmt.Fprintf(stderr, "converter %s: %s\n", name, st.msg)
		return st.code
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "converter %s: %s\nusage: %s\n(converter %s -h explains the arguments and flags)\n", name, ue.msg, ue.synopsis, name)
		return 2
	}
	fmt.Fprintf(stderr, "converter %s: %s\n", name, oneLine(err.Error()))
	return fault.KindOf(err).ExitCode()
}

// exitStatus is an error that sets the exit code itself: a batch's status follows the worst
// outcome among its files, not one error's kind.
type exitStatus struct {
	code int
	msg  string
}

func (e *exitStatus) Error() string { return e.msg }

// guard runs fn and turns a panic into an internal error, so that the exit code and one-line
// message contract holds even for a bug: a stack trace is never what a user sees.
func guard(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fault.New(fault.Internal, "", "internal error (a bug, please report it): %v", r)
		}
	}()
	return fn()
}

// oneLine keeps an error message to a single line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

const usage = `usage:
  converter convert [--force] [--select PATH] [--manifest FILE] [--allow-global MODULE.NAME]... INPUT [OUTPUT]
  converter scan    [--json] [--allow-global MODULE.NAME]... INPUT|DIR|s3://BUCKET/PREFIX
  converter batch   [--workers N] [--dry-run] [--force] [--remove-source] [--report FILE]
                    [--include GLOB]... [--exclude GLOB]... [--allow-global MODULE.NAME]...
                    [--s3-endpoint URL] SOURCE [DEST]
  converter verify  [--source INPUT] [--allow-global MODULE.NAME]... FILE.safetensors
  converter serve   [flags]
  converter worker  [flags]
  converter healthcheck [--addr HOST:PORT]
  converter migrate --db postgres://...
  converter version
Run converter COMMAND -h for a command's arguments, flags and exit codes.`
