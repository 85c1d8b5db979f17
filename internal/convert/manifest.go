package convert

import (
	"github.com/ptsafe/converter/internal/buildinfo"
	"github.com/ptsafe/converter/internal/fault"
	"github.com/ptsafe/converter/internal/unpickler"
)

// Version is the converter version recorded in manifests: the module version and VCS revision
// the Go toolchain recorded in this binary.
var Version = buildinfo.Version()

// Manifest records what a conversion read and wrote; `scan --json` prints the same schema with
// Output unset. Field names are a stable contract.
type Manifest struct {
	ConverterVersion string            `json:"converter_version"`
	Source           Source            `json:"source"`
	Output           *Output           `json:"output,omitempty"`
	Verdict          string            `json:"verdict"` // safe, unsafe, malformed, unsupported
	Error            *ErrorInfo        `json:"error,omitempty"`
	Globals          []GlobalRef       `json:"globals"`
	Tensors          []Tensor          `json:"tensors"`
	Aliases          map[string]string `json:"aliases"`
	Dropped          []Dropped         `json:"dropped"`
	// DroppedMore counts the dropped leaves beyond the first max-dropped-listed, which Dropped
	// lists.
	DroppedMore int `json:"dropped_more,omitempty"`
}

// Source describes the input checkpoint.
type Source struct {
	Path      string `json:"path"`
	Size      int64  `json:"size"`
	SHA256    string `json:"sha256,omitempty"`
	Container string `json:"container"` // zip, legacy, tar, torchscript, pickle, npy, 7z, unknown
	Prefix    string `json:"prefix,omitempty"`
	Protocol  int    `json:"pickle_protocol"`
	ByteOrder string `json:"byteorder,omitempty"`
}

// Output describes the written safetensors file.
type Output struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// PartSize and PartSHA256 are set when Options.PartSize asked for them: the SHA-256 of
	// each consecutive PartSize bytes of the file, the last part shorter.
	PartSize   int64    `json:"part_size,omitempty"`
	PartSHA256 []string `json:"part_sha256,omitempty"`
}

// ErrorInfo is the classified failure of a scan.
type ErrorInfo struct {
	Type   fault.Kind `json:"type"` // unsafe, malformed, unsupported or limit
	Detail string     `json:"detail"`
}

// GlobalRef is one global seen in one pickle stream of the source.
type GlobalRef struct {
	Entry string `json:"entry"`
	unpickler.Global
}

// Tensor is one tensor of the output (or, in a scan, of the plan).
type Tensor struct {
	Name        string    `json:"name"`
	DType       string    `json:"dtype"`
	Shape       []int64   `json:"shape"`
	Bytes       int64     `json:"bytes"`
	DataOffsets *[2]int64 `json:"data_offsets,omitempty"` // in the output's data section
	SHA256      string    `json:"sha256,omitempty"`
	Storage     string    `json:"storage"` // storage key in the source
}

// Dropped is a non-tensor leaf of the selected tree, listed rather than silently lost.
type Dropped struct {
	Path string `json:"path"`
	Type string `json:"type"`
}
