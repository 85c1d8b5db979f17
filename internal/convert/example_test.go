package convert_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ptsafe/converter/internal/convert"
	"github.com/ptsafe/converter/internal/fault"
)

// File converts a checkpoint torch.save wrote and returns its manifest: every global the
// pickle named, with its class, and every tensor with its place in the output and its SHA-256.
func ExampleFile() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	src := "../../testdata/torch/mymodel.pt"
	dst := filepath.Join(dir, convert.OutputName(filepath.Base(src)))

	m, err := convert.File(context.Background(), src, dst, convert.Options{})
	if err != nil {
		fmt.Println(fault.KindOf(err), err)
		return
	}
	fmt.Println(filepath.Base(m.Output.Path), m.Verdict, m.Source.Container)
	for _, g := range m.Globals {
		fmt.Println(g.Class, g.Qualified())
	}
	for _, t := range m.Tensors {
		fmt.Println(t.Name, t.DType, t.Shape, *t.DataOffsets, t.SHA256[:12])
	}
	// Output:
	// mymodel.safetensors safe zip
	// allowed torch._utils._rebuild_tensor_v2
	// allowed torch.FloatStorage
	// allowed collections.OrderedDict
	// bias F32 [2] [0 8] 457f8b71548c
	// weight F32 [2 3] [8 32] 31b1d7127a95
}
