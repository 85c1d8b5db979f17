// Command torchzip-plan prints, for each checkpoint named on its command line, what the
// converter reads from it: the container's pickle streams and records (with SHA-256 digests of
// their bytes) and the outcome of a full conversion (exit code, error and every output tensor's
// digest), one JSON object per line. It is the Go side of the differential harness
// testdata/differential/torchdiff.py, which compares these readings with torch's own.
//
// It is a development tool: it runs in-process, without the sandbox, and must only be given
// benign files.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/limits"
	"github.com/ptsafe/converter/internal/torchzip"
	"github.com/ptsafe/converter/internal/unpickler"
)

// plan is one file's reading.
type plan struct {
	File    string            `json:"file"`
	Kind    string            `json:"kind"`
	Problem string            `json:"problem,omitempty"`
	Streams []stream          `json:"streams"`
	Records map[string]record `json:"records"`
	Exit    int               `json:"exit"`
	Error   string            `json:"error,omitempty"`
	Tensors []tensor          `json:"tensors"`
	Aliases map[string]string `json:"aliases"`
}

type stream struct {
	Entry  string `json:"entry"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	SHA256 string `json:"sha256,omitempty"`
	Err    string `json:"err,omitempty"`
}

type record struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
	Err    string `json:"err,omitempty"`
}

type tensor struct {
	Name   string  `json:"name"`
	DType  string  `json:"dtype"`
	Shape  []int64 `json:"shape"`
	SHA256 string  `json:"sha256"`
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "torchzip-plan:", err)
		os.Exit(1)
	}
}

func run(paths []string, stdout io.Writer) error {
	scratch, err := os.MkdirTemp("", "torchzip-plan")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	enc := json.NewEncoder(stdout)
	for _, path := range paths {
		p, err := read(path, scratch)
		if err != nil {
			return err
		}
		if err := enc.Encode(p); err != nil {
			return err
		}
	}
	return nil
}

// read plans one file: the container as torchzip reads it, then a conversion.
func read(path, scratch string) (*plan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	c, err := torchzip.Open(f, st.Size(), limits.Default(), &unpickler.Policy{})
	if err != nil {
		return nil, err
	}
	p := &plan{File: path, Kind: string(c.Kind), Records: map[string]record{}, Tensors: []tensor{}}
	if c.Problem != nil {
		p.Problem = c.Problem.Error()
	}
	for _, s := range c.Streams {
		out := stream{Entry: s.Entry, Offset: s.Offset, Length: s.Scan.Length}
		if s.Err != nil {
			out.Err = s.Err.Error()
		} else {
			out.SHA256 = digest(s.Raw)
		}
		p.Streams = append(p.Streams, out)
	}
	for _, key := range c.StorageKeys() {
		rec, _ := c.Storage(key)
		out := record{Size: rec.Size}
		h := sha256.New()
		r, err := rec.Open()
		if err == nil {
			_, err = io.Copy(h, r)
		}
		if err != nil {
			out.Err = err.Error()
		} else {
			out.SHA256 = hex.EncodeToString(h.Sum(nil))
		}
		p.Records[key] = out
	}
	m, err := convert.File(context.Background(), path, filepath.Join(scratch, "out.safetensors"), convert.Options{})
	if err != nil {
		p.Exit, p.Error = fault.KindOf(err).ExitCode(), err.Error()
		return p, nil
	}
	for _, t := range m.Tensors {
		p.Tensors = append(p.Tensors, tensor{Name: t.Name, DType: t.DType, Shape: t.Shape, SHA256: t.SHA256})
	}
	p.Aliases = m.Aliases
	return p, nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
