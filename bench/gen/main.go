// Command gen writes a synthetic PyTorch checkpoint with internal/synth, for bench/run.sh.
//
//	go run ./bench/gen -o model.pt -size 1G [-format zip|zip-deflated|legacy] [-tensors 128]
//	    [-dtype F16] [-shapes matrix|flat|mixed] [-seed 1] [-first-layer 0] [-many-small]
//
// It prints the file's size, tensor count and write speed on stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ptsafe/converter/internal/dtype"
	"github.com/ptsafe/converter/internal/synth"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(_ context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "output `file` (required)")
	size := fs.String("size", "1G", "total tensor bytes: a number with an optional K, M, G, T suffix (powers of 1024)")
	format := fs.String("format", "zip", "container: zip, zip-deflated or legacy")
	tensors := fs.Int("tensors", 128, "number of tensors")
	dt := fs.String("dtype", "F16", "safetensors dtype name of every tensor (F16, BF16, F32, F64, I64, I32, I16, I8, U8, BOOL, C64)")
	shapes := fs.String("shapes", "matrix", "shape policy: matrix, flat or mixed")
	seed := fs.Uint64("seed", 1, "content seed")
	first := fs.Int("first-layer", 0, "the first tensor is model.layers.`N`.weight (a shard of a sharded model)")
	many := fs.Bool("many-small", false, "the 100,000 small tensors case (overrides -size, -tensors, -dtype, -shapes)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		fs.Usage()
		return errors.New("want -o FILE and no arguments")
	}
	total, err := parseSize(*size)
	if err != nil {
		return err
	}
	d, ok := dtype.Parse(*dt)
	if !ok {
		return fmt.Errorf("unknown dtype %q", *dt)
	}
	f, err := synth.ParseFormat(*format)
	if err != nil {
		return err
	}
	sp, err := synth.ParseShapePolicy(*shapes)
	if err != nil {
		return err
	}
	spec := synth.Spec{Format: f, Tensors: *tensors, TotalBytes: total, DType: d, Shapes: sp, Seed: *seed, FirstLayer: *first}
	if *many {
		spec = synth.ManySmall(*seed)
		spec.Format = f
	}
	start := time.Now()
	if err := synth.WriteFile(*out, spec); err != nil {
		return err
	}
	el := time.Since(start)
	st, err := os.Stat(*out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "gen: %s: %s, %d tensors, %d bytes in %.2fs (%.0f MB/s)\n",
		*out, f, spec.Tensors, st.Size(), el.Seconds(), float64(st.Size())/el.Seconds()/1e6)
	return nil
}

// parseSize reads "1G", "256M", "4096", "1.5G" as bytes (binary multiples).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(s, "iB"), "B"))
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bad size %q: want a positive number with an optional K, M, G or T suffix", s)
	}
	return int64(v * float64(mult)), nil
}
