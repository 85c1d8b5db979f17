package safetensors_test

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/safetensors"
)

// Read validates a header without reading any tensor data: here a two-tensor file built by
// hand (little-endian header length, JSON header, data section), then the same file cut short.
func ExampleRead() {
	header := `{"__metadata__":{"format":"pt"},"bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"weight":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]}}`
	for len(header)%8 != 0 {
		header += " "
	}
	var file bytes.Buffer
	binary.Write(&file, binary.LittleEndian, uint64(len(header)))
	file.WriteString(header)
	file.Write(make([]byte, 32)) // the data section: 8 + 24 bytes of float32 zeros

	f, err := safetensors.Read(bytes.NewReader(file.Bytes()), int64(file.Len()), 0)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("format:", f.Metadata["format"])
	for _, t := range f.Tensors {
		fmt.Printf("%s %s %v at file bytes [%d, %d)\n", t.Name, t.DType, t.Shape, f.DataStart+t.Begin, f.DataStart+t.End)
	}

	// The data section no longer covers the last tensor: a classified error, never a panic.
	_, err = safetensors.Read(bytes.NewReader(file.Bytes()), int64(file.Len())-4, 0)
	fmt.Println(fault.KindOf(err))
	// Output:
	// format: pt
	// bias F32 [2] at file bytes [160, 168)
	// weight F32 [2 3] at file bytes [168, 192)
	// malformed
}
