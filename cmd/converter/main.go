// Command converter turns PyTorch pickle checkpoints into verified safetensors files without
// executing anything the pickle names. See README.md for the command-line contract.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
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
	switch args[0] {
	case "serve":
		if err := runServe(ctx, args[1:], getenv, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "converter serve: %v\n", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(stderr, "converter: unknown command %q\n%s\n", args[0], usage)
		return 2
	}
}

const usage = `usage:
  converter convert [--select PATH] [--manifest FILE] [--allow-global MODULE.NAME]... INPUT [OUTPUT]
  converter scan    [--json] INPUT
  converter verify  [--source INPUT] FILE.safetensors
  converter serve   [flags]
  converter version`
