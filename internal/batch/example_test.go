package batch_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ptsafe/converter/internal/batch"
	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/store"
)

// Convert a Hugging Face-style repository into a new directory. The CLI passes the sandbox
// Runner as the engine; convert.InProcess is for input one trusts.
func ExampleRun() {
	dir, err := os.MkdirTemp("", "example-*")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	src, err := store.NewLocal(filepath.Join("..", "..", "testdata", "repo"))
	if err != nil {
		panic(err)
	}
	dst, err := store.NewLocal(filepath.Join(dir, "safetensors"))
	if err != nil {
		panic(err)
	}
	rep, err := batch.Run(context.Background(), src, dst, convert.InProcess{}, batch.Options{Workers: 2})
	if err != nil {
		panic(err)
	}
	for _, f := range rep.Files {
		fmt.Printf("%-34s %-9s %s\n", f.Path, f.Outcome, f.Output)
	}
	fmt.Println("exit status", rep.ExitCode())
	// Output:
	// adapter.safetensors                copied    adapter.safetensors
	// checkpoints/last.ckpt              converted checkpoints/last.safetensors
	// config.json                        copied    config.json
	// legacy.pt                          converted legacy.safetensors
	// merges.txt                         copied    merges.txt
	// pytorch_model-00001-of-00003.bin   converted model-00001-of-00003.safetensors
	// pytorch_model-00002-of-00003.bin   converted model-00002-of-00003.safetensors
	// pytorch_model-00003-of-00003.bin   converted model-00003-of-00003.safetensors
	// pytorch_model.bin.index.json       converted model.safetensors.index.json
	// tokenizer.json                     copied    tokenizer.json
	// vocab.txt                          copied    vocab.txt
	// exit status 0
}
